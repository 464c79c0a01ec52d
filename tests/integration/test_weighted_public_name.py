"""Canary traffic from clients that cannot use the Router: with ``policy --unpinned weighted``
the public name splits requests that name no version by the rollout's weights, inside
Triton (real embedded tritonserver; stable and canary visibly different detectors).

Which version answered is read from the answer itself: stable is the trained tiny detector,
the canary an untrained YOLOv8n, and an answer equal to one version's pinned answer to the
same image can only come from that version.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from export.shapes import generate_shapes_image
from repo_manager.analysis import ScrapeProvider, judge
from repo_manager.gates import LiveGates
from repo_manager.routing.plan import RoutePlan
from repo_manager.state import RoutingTable
from tests.eventually import eventually
from tests.integration.conftest import MotoServer, S3Fleet, Stack, running_fleet
from tests.integration.public_clients import (
    MODEL,
    RAW,
    SIZE,
    VERSIONS,
    UnpinnedTraffic,
    inputs,
    matches,
    request,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


class Versions:
    """Tells which version answered an image, from each version's pinned answers."""

    def __init__(self, url: str, images: list[np.ndarray], versions: list[str]) -> None:
        self.images = images
        with grpcclient.InferenceServerClient(url) as client:
            self.answers = {v: [pinned(client, v, x) for x in images] for v in versions}
        for i in range(len(images)):  # the detectors really differ on every image
            outs = [self.answers[v][i] for v in versions]
            assert not any(matches(a, b) for a in outs for b in outs if a is not b)

    def of(self, index: int, output: np.ndarray) -> str:
        found = [v for v, outs in self.answers.items() if matches(output, outs[index])]
        assert len(found) == 1, f"answer of image {index} matches {found}"
        return found[0]


def pinned(client: grpcclient.InferenceServerClient, version: str, x: np.ndarray) -> np.ndarray:
    output = client.infer(VERSIONS, request(x), model_version=version).as_numpy("output0")
    assert output is not None
    return output


def unpinned_answer(
    client: grpcclient.InferenceServerClient, x: np.ndarray, key: str | None = None
) -> np.ndarray:
    parameters = None if key is None else {"key": key}
    output = client.infer(MODEL, request(x), parameters=parameters).as_numpy("output0")
    assert output is not None
    return output


def spread(url: str, versions: Versions, count: int, threads: int) -> Counter[str]:
    """``count`` unpinned requests from ``threads`` threads: how many each version served."""
    served: Counter[str] = Counter()
    lock = threading.Lock()

    def work(start: int) -> None:
        with grpcclient.InferenceServerClient(url) as client:
            for i in range(start, count, threads):
                x = i % len(versions.images)
                version = versions.of(x, unpinned_answer(client, versions.images[x]))
                with lock:
                    served[version] += 1

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return served


def within(observed: int, count: int, share: float, sigmas: float = 4.0) -> bool:
    """Binomial tolerance: ``observed`` of ``count`` is within ``sigmas`` of ``share``."""
    return abs(observed - count * share) <= sigmas * math.sqrt(count * share * (1 - share))


def triton_counts(metrics_url: str) -> Counter[str]:
    """Successful requests per version of the versions model (Triton's own counters)."""
    counts: Counter[str] = Counter()
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith("nv_inference_request_success{") and f'model="{VERSIONS}"' in line:
            version = line.split('version="', 1)[1].split('"', 1)[0]
            counts[version] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def status(stack: Stack | S3Fleet) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(stack.cli("status", MODEL, "--json").stdout)
    return document


def test_weighted_public_name_splits_by_weight_keeps_keys_follows_set_weight_and_goes_back(
    stack: Stack, trained_detector: Path, weights: Path
) -> None:
    stack.publish(MODEL, "1", trained_detector, *RAW)
    stack.publish(MODEL, "2", weights, "--canary-weight", "30")
    assert status(stack)["unpinned"] == "stable"
    stack.cli("policy", MODEL, "--unpinned", "weighted")
    document = status(stack)
    assert document["unpinned"] == "weighted"
    assert document["public"] == {"name": MODEL, "version": "weighted 1:70,2:30"}
    versions = Versions(stack.url, inputs(8, seed=3), ["1", "2"])

    served = spread(stack.url, versions, 2000, threads=4)
    assert sum(served.values()) == 2000
    assert within(served["2"], 2000, 0.30), served

    # A key sticks to one version, the one the Router's rule gives it.
    plan = RoutePlan.build(
        MODEL,
        RoutingTable(model=MODEL, stable="1", canary="2", weights={"1": 70, "2": 30}, generation=0),
    )
    with grpcclient.InferenceServerClient(stack.url) as client:
        for k in range(20):
            key = f"cam-{k}"
            seen = {
                versions.of(i % 8, unpinned_answer(client, versions.images[i % 8], key))
                for i in range(10)
            }
            assert seen == {plan.choose(key)}, key

    # Ultralytics' own client (no version, a batch per call) splits like the others.
    from ultralytics import YOLO

    remote = YOLO(f"grpc://{stack.url}/{MODEL}", task="detect")
    rng = np.random.default_rng(11)
    images = [generate_shapes_image(imgsz=SIZE, rng=rng).image for _ in range(200)]
    remote.predict(images[0], imgsz=SIZE, verbose=False)  # its set-up sends a warm-up too
    before = triton_counts(stack.server.metrics_url)
    for image in images:
        remote.predict(image, imgsz=SIZE, verbose=False)
    after = triton_counts(stack.server.metrics_url)
    canary_share = after["2"] - before["2"]
    assert after["1"] - before["1"] + canary_share == 200
    assert within(canary_share, 200, 0.30), (before, after)

    stack.cli("set-weight", MODEL, "0")
    returned = time.monotonic()
    with grpcclient.InferenceServerClient(stack.url) as client:
        answers = []
        while time.monotonic() - returned < 2.0:
            x = len(answers) % 8
            answers.append(versions.of(x, unpinned_answer(client, versions.images[x])))
    assert answers and set(answers) == {"1"}, Counter(answers)

    stack.cli("set-weight", MODEL, "50")
    assert within(spread(stack.url, versions, 200, threads=2)["2"], 200, 0.5)
    stack.cli("policy", MODEL, "--unpinned", "stable")
    assert spread(stack.url, versions, 100, threads=2) == Counter({"1": 100})
    assert status(stack)["public"] == {"name": MODEL, "version": "1"}


def test_a_failed_canary_request_is_answered_by_stable_and_counted(
    stack: Stack, trained_detector: Path, weights: Path
) -> None:
    stack.publish(MODEL, "1", trained_detector, *RAW)
    stack.publish(MODEL, "2", weights, "--canary-weight", "100")
    stack.cli("policy", MODEL, "--unpinned", "weighted")
    versions = Versions(stack.url, inputs(4, seed=5), ["1", "2"])
    assert spread(stack.url, versions, 20, threads=1) == Counter({"2": 20})
    # The canary goes away behind the manager's back (a version Triton lost): every
    # unpinned request drawn for it fails there, and stable answers it instead.
    config = json.dumps({"version_policy": {"specific": {"versions": [1]}}})
    with grpcclient.InferenceServerClient(stack.url) as client:
        full = client.get_model_config(VERSIONS, as_json=True)["config"]
        full["version_policy"] = json.loads(config)["version_policy"]
        client.load_model(VERSIONS, config=json.dumps(full))
    assert spread(stack.url, versions, 20, threads=1) == Counter({"1": 20})
    text = urllib.request.urlopen(stack.server.metrics_url, timeout=10).read().decode()
    retried = [
        line
        for line in text.splitlines()
        if line.startswith("repo_manager_unpinned_requests_total{")
        and 'outcome="retried"' in line
        and 'version="2"' in line
    ]
    assert retried and float(retried[0].rsplit(" ", 1)[1]) == 20, retried
    reconciled = stack.cli("reconcile", MODEL)
    assert "loaded 1,2" in reconciled.stdout, reconciled.stdout
    assert spread(stack.url, versions, 20, threads=1) == Counter({"2": 20})


def test_weighted_public_name_mirrors_a_shadow_share_to_the_canary_for_the_analysis(
    stack: Stack, trained_detector: Path, weights: Path
) -> None:
    stack.publish(MODEL, "1", trained_detector, *RAW)
    stack.publish(MODEL, "2", weights, "--canary-weight", "0")
    refused = stack.cli("policy", MODEL, "--shadow", "0.5", check=False)
    assert refused.code == 2 and "--shadow needs --unpinned weighted" in refused.stderr
    stack.cli("policy", MODEL, "--unpinned", "weighted", "--shadow", "1")
    document = status(stack)
    assert document["unpinned_shadow"] == 1.0
    assert document["public"]["version"] == "weighted 1:100,2:0 shadow 1"
    versions = Versions(stack.url, inputs(4, seed=7), ["1", "2"])
    before = triton_counts(stack.server.metrics_url)
    provider = ScrapeProvider([stack.server.metrics_url])

    def mirrors_ended() -> tuple[float, dict[str, dict[str, float]]]:
        snapshot = provider.snapshot(MODEL)
        mirrored = snapshot["shadow_ok"].get("2", 0) + snapshot["shadow_error"].get("2", 0)
        return mirrored + shadow_dropped(stack.server.metrics_url), snapshot

    def ended_at_least(count: int) -> bool:
        return mirrors_ended()[0] >= count

    # Every user answer comes from stable (weight 0); each is also sent to the canary. One
    # at a time, each after the last mirror ended: a client faster than the canary makes
    # mirrors be dropped (by design, counted), as many as the machine's load decides
    # (measured: 18 of 30 back to back beside the soak test).
    for sent in range(1, 31):
        assert spread(stack.url, versions, 1, threads=1) == Counter({"1": 1})
        assert eventually(partial(ended_at_least, sent), timeout=10), mirrors_ended()
    ended, snapshot = mirrors_ended()
    dropped = shadow_dropped(stack.server.metrics_url)
    assert ended == 30 and dropped == 0 and snapshot["shadow_ok"]["2"] == 30, (snapshot, dropped)
    assert snapshot["shadow_latency_count"]["2"] == snapshot["shadow_ok"]["2"]
    after = triton_counts(stack.server.metrics_url)
    assert after["2"] - before["2"] == snapshot["shadow_ok"]["2"]  # Triton counts them too
    stack.cli("policy", MODEL, "--shadow", "0")
    assert status(stack)["public"]["version"] == "weighted 1:100,2:0"
    before = triton_counts(stack.server.metrics_url)
    spread(stack.url, versions, 10, threads=1)
    time.sleep(0.5)
    assert triton_counts(stack.server.metrics_url)["2"] == before["2"]


def shadow_dropped(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("repo_manager_router_shadow_requests") and 'outcome="dropped"' in line
    )


@pytest.fixture
def fleet2(moto: MotoServer, bucket: str, tmp_path: Path) -> Iterator[S3Fleet]:
    with running_fleet(moto, bucket, tmp_path, 2) as running:
        yield running


def test_no_unpinned_request_fails_on_a_weighted_fleet_through_moves_and_a_restart(
    fleet2: S3Fleet, trained_detector: Path, weights: Path
) -> None:
    fleet2.publish(MODEL, "1", trained_detector, *RAW)
    fleet2.publish(MODEL, "2", weights)
    fleet2.cli("policy", MODEL, "--unpinned", "weighted")
    seen: list[tuple[str, str, list[str | None], list[str | None]]] = []

    def routes_after(step: str, wanted: str) -> None:
        """Each server's public route right after ``step``; a wrong one is looked at again
        for up to 10 s, so the finding says whether it settles by itself."""
        first = [s["public"] for s in status(fleet2)["servers"]]
        later = first
        deadline = time.monotonic() + 10
        while later != [wanted] * 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            later = [s["public"] for s in status(fleet2)["servers"]]
        seen.append((step, wanted, first, later))

    routes_after("policy", "weighted 1:90,2:10")
    with UnpinnedTraffic(fleet2.urls, threads=3) as traffic:
        time.sleep(1.0)
        fleet2.cli("set-weight", MODEL, "50")
        routes_after("set-weight 50", "weighted 1:50,2:50")
        time.sleep(1.0)
        traffic.running.clear()  # the server going away drops its clients' connections
        time.sleep(0.5)
        fleet2.servers[1].kill()
        fleet2.start(1)
        reconciled = fleet2.cli("reconcile", MODEL)
        assert "loaded 1,2" in reconciled.stdout, reconciled.stdout
        traffic.running.set()
        routes_after("restart + reconcile", "weighted 1:50,2:50")
        time.sleep(1.0)
        fleet2.cli("promote", MODEL)
        routes_after("promote", "weighted 2:100")
        time.sleep(1.0)
        fleet2.publish(MODEL, "3", trained_detector, "--canary-weight", "40")
        routes_after("publish 3", "weighted 2:60,3:40")
        published = time.monotonic()
        time.sleep(2.0)
        fleet2.cli("rollback", MODEL)
        rolled_back = time.monotonic()
        routes_after("rollback", "weighted 2:100")
        time.sleep(1.0)
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.sent > 50, traffic.sent
    wrong = [(step, first, later) for step, wanted, first, later in seen if first != [wanted] * 2]
    assert not wrong, f"public routes right after a move, and 10 s later: {wrong}"
    two = Versions(fleet2.urls[0], traffic.images, ["2"]).answers["2"]
    during = [
        matches(out, two[x]) for at, x, out in traffic.answers if published < at < rolled_back
    ]
    after = [matches(out, two[x]) for at, x, out in traffic.answers if at > rolled_back]
    assert during and not all(during), "no unpinned request reached canary 3 on the fleet"
    assert after and all(after)


def test_the_weighted_name_counts_end_to_end_boxes_so_a_blind_canary_fails_without_a_router(
    stack: Stack, trained_detector: Path, weights: Path
) -> None:
    """Clients that call Triton directly are judged on what the versions see: the weighted
    public name counts each end-to-end answer's boxes per version (Triton's metrics port,
    the Router's metric names), and the detection gate fails an untrained canary."""
    stack.publish(MODEL, "1", trained_detector)  # end-to-end: the default contract
    stack.publish(MODEL, "2", weights, "--canary-weight", "50")
    stack.cli("policy", MODEL, "--unpinned", "weighted")
    provider = ScrapeProvider([stack.server.metrics_url])
    before = provider.snapshot(MODEL)
    rng = np.random.default_rng(5)
    with grpcclient.InferenceServerClient(stack.url) as client:
        for _ in range(120):
            image = generate_shapes_image(imgsz=SIZE, rng=rng).image
            x = np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1))[None] / 255.0
            unpinned_answer(client, x.astype(np.float32))
    after = provider.snapshot(MODEL)
    images = {v: after["router_images"].get(v, 0) - before["router_images"].get(v, 0) for v in "12"}
    assert images["1"] + images["2"] == 120 and min(images.values()) > 20, images
    verdict = judge(after, before, stable="1", canary="2", gates=LiveGates())
    gates = {g.name: g for g in verdict.gates}
    stable_boxes = after["router_boxes"]["1"] - before["router_boxes"].get("1", 0)
    assert stable_boxes / images["1"] > 1.0, after  # the trained detector sees the shapes
    assert not gates["max_box_count_z[router]"].passed, verdict.reason
