"""RoutePlan and key_point: weighted and sticky choice, the same in every process."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import zlib
from collections import Counter
from typing import Any

import numpy as np
import pytest

from repo_manager import RoutingError
from repo_manager.errors import InvalidInputError
from repo_manager.routing import RoutePlan, key_point
from tests.unit.routing_fakes import MODEL, binomial_ok, table


@pytest.mark.parametrize("canary_weight", [1, 10, 50, 90])
def test_random_split_follows_weights_within_binomial_tolerance(canary_weight: int) -> None:
    plan = RoutePlan.build(MODEL, table({"1": 100 - canary_weight, "2": canary_weight}))
    n = 50_000
    hits = sum(plan.choose() == "2" for _ in range(n))
    assert binomial_ok(hits, n, canary_weight / 100)


def test_zero_and_full_weights_send_everything_to_one_version() -> None:
    only_stable = RoutePlan.build(MODEL, table({"1": 100, "2": 0}))
    only_canary = RoutePlan.build(MODEL, table({"1": 0, "2": 100}))
    assert {only_stable.choose() for _ in range(1000)} == {"1"}
    assert {only_canary.choose(f"k{i}") for i in range(1000)} == {"2"}


def test_weights_that_do_not_sum_to_100_are_normalised() -> None:
    plan = RoutePlan.build(MODEL, table({"1": 3, "2": 1}))
    hits = sum(plan.choose() == "2" for _ in range(40_000))
    assert binomial_ok(hits, 40_000, 0.25)


def test_a_table_without_weights_routes_to_stable() -> None:
    plan = RoutePlan.build(MODEL, table({}, canary=None))
    assert plan.choose() == "1" and plan.fallback == {"1": None}


def test_no_table_raises_routing_error() -> None:
    with pytest.raises(RoutingError, match="no routing table"):
        RoutePlan.build(MODEL, None).choose()


def test_sticky_key_always_gets_the_same_version() -> None:
    plan = RoutePlan.build(MODEL, table({"1": 50, "2": 50}))
    for i in range(200):
        assert len({plan.choose(f"user-{i}") for _ in range(20)}) == 1


def test_sticky_keys_split_by_weight() -> None:
    plan = RoutePlan.build(MODEL, table({"1": 80, "2": 20}))
    n = 20_000
    hits = Counter(plan.choose(f"camera-{i}") for i in range(n))
    assert binomial_ok(hits["2"], n, 0.2)


def test_keys_on_canary_stay_there_as_its_weight_grows() -> None:
    keys = [f"session-{i}" for i in range(5000)] + list(range(5000))
    on_canary_before: set[Any] = set()
    for weight in (1, 5, 10, 25, 50, 75, 99, 100):
        plan = RoutePlan.build(MODEL, table({"1": 100 - weight, "2": weight}))
        on_canary = {k for k in keys if plan.choose(k) == "2"}
        assert on_canary_before <= on_canary, f"keys left the canary at weight {weight}"
        on_canary_before = on_canary
    assert len(on_canary_before) == len(keys)


def test_key_hash_is_the_same_in_every_process() -> None:
    code = "from repo_manager.routing import key_point; print(repr(key_point('user-42')))"
    seen = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        seen.add(float(out.stdout))
    assert seen == {key_point("user-42")}
    assert 0.0 <= key_point("user-42") < 100.0


def test_key_point_formula_is_pinned_so_other_clients_can_reproduce_it() -> None:
    # crc32 = 0x7D06B873; times 0x9E3779B97F4A7C15 mod 2**64; top 53 bits; * 100 / 2**53
    expected = (((zlib.crc32(b"user-42") * 0x9E3779B97F4A7C15) % 2**64) >> 11) * 100 / 2**53
    assert key_point("user-42") == expected == pytest.approx(37.46545405312063)


@pytest.mark.parametrize("family", ["user-{}", "{}", "cam/{}/0"])
def test_sequential_keys_spread_uniformly_over_the_range(family: str) -> None:
    n = 50_000
    buckets = np.bincount([int(key_point(family.format(i))) for i in range(n)], minlength=100)
    chi2 = float((((buckets - n / 100) ** 2) / (n / 100)).sum())
    assert chi2 < 99 + 5 * math.sqrt(2 * 99)  # 99 degrees of freedom, 5 sigma


def test_key_types_str_bytes_int_are_accepted_and_others_rejected() -> None:
    assert key_point("7") == key_point(b"7") == key_point(7)
    with pytest.raises(InvalidInputError):
        key_point(7.0)  # type: ignore[arg-type]


def test_canary_takes_the_top_of_the_key_range() -> None:
    plan = RoutePlan.build(MODEL, table({"1": 70, "2": 30}))
    assert plan.versions == ("1", "2") and plan.thresholds == (70.0,)
