"""The Router front with fake clients: version choice per request, fallback, threads, close.

Its parts have their own files: test_routing_plan, _servers, _table, _detection, test_shadow.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from repo_manager import Router, RoutingError
from repo_manager.errors import InvalidInputError
from tests.unit.routing_fakes import MODEL, binomial_ok, make_router, write_state


def sample(router: Router, name: str, **labels: str) -> float:
    registry = router.metrics.registry
    assert registry is not None
    return registry.get_sample_value(name, {"model": MODEL, **labels}) or 0.0


def fallback_counts(router: Router) -> tuple[float, float, float]:
    """(fallbacks away from 2, errors of 2, requests served by 1 as a fallback)."""
    return (
        sample(router, "repo_manager_router_fallbacks_total", version="2"),
        sample(router, "repo_manager_router_errors_total", version="2"),
        sample(router, "repo_manager_router_requests_total", version="1", outcome="fallback"),
    )


# ---- Router.infer ------------------------------------------------------------------------


def test_infer_pins_the_chosen_version_and_reports_it(repo: Path) -> None:
    with make_router(repo)[0] as router:
        served = Counter(router.infer([]).version for _ in range(2000))
    assert set(served) == {"1", "2"} and binomial_ok(served["2"], 2000, 0.1)


def test_explicit_version_overrides_the_table(repo: Path) -> None:
    router, [client] = make_router(repo)
    with router:
        result = router.infer([], version=7)
    assert result.version == "7" and client.calls == ["7"] and not result.fallback


def test_failing_canary_falls_back_to_stable_and_is_counted(repo: Path) -> None:
    write_state(repo, {"1": 0, "2": 100}, generation=2)
    router, [client] = make_router(repo)
    client.fail["2"] = InferenceServerException("boom", status="StatusCode.INTERNAL")
    before = fallback_counts(router)
    with router:
        result = router.infer([])
    assert (result.version, result.fallback) == ("1", True)
    assert client.calls == ["2", "1"]
    after = fallback_counts(router)
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]


def test_failing_stable_falls_back_to_canary(repo: Path) -> None:
    write_state(repo, {"1": 100, "2": 0}, generation=2)
    router, [client] = make_router(repo)
    client.fail["1"] = InferenceServerException(
        "Request for unknown model: 'det' version 1 is not at ready state",
        status="StatusCode.UNAVAILABLE",
    )
    with router:
        assert router.infer([]).version == "2"


def test_both_versions_failing_raises_routing_error_chained(repo: Path) -> None:
    router, [client] = make_router(repo)
    for v in ("1", "2"):
        client.fail[v] = InferenceServerException(f"bad {v}", status="StatusCode.INTERNAL")
    with router, pytest.raises(RoutingError, match="failed too") as info:
        router.infer([])
    assert isinstance(info.value.__cause__, InferenceServerException)


def test_pinned_version_failure_is_not_hidden_by_a_fallback(repo: Path) -> None:
    router, [client] = make_router(repo)
    client.fail["2"] = InferenceServerException("bad", status="StatusCode.INTERNAL")
    with router, pytest.raises(RoutingError, match="version 2 failed"):
        router.infer([], version="2")
    assert client.calls == ["2"]


def test_stable_alone_failing_has_nothing_to_fall_back_to(repo: Path) -> None:
    write_state(repo, {"1": 100}, generation=2, canary=None)
    router, [client] = make_router(repo)
    client.fail["1"] = InferenceServerException("bad", status="StatusCode.INTERNAL")
    with router, pytest.raises(RoutingError, match="no other version"):
        router.infer([])


def test_router_is_shared_safely_by_threads(repo: Path) -> None:
    router, [client] = make_router(repo)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(500):
                router.infer([], key=i)
        except BaseException as exc:
            errors.append(exc)

    with router:
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and len(client.calls) == 4000


def test_close_stops_the_poller_and_closes_clients(repo: Path) -> None:
    router, [client] = make_router(repo)
    router.close()
    router.close()
    assert client.closed and not router._table.poller.is_alive()
    with pytest.raises(RoutingError, match="closed"):
        router.infer([])


def test_router_rejects_bad_arguments(repo: Path) -> None:
    with pytest.raises(InvalidInputError):
        make_router(repo, [])
    with pytest.raises(InvalidInputError):
        make_router(repo, poll_interval=0)


# ---- package hygiene ---------------------------------------------------------------------


def test_importing_the_package_pulls_no_heavy_dependency() -> None:
    code = (
        "import sys, repo_manager; "
        "heavy = {'torch', 'ultralytics', 'onnx', 'export', 'cv2'}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
