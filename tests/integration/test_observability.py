"""The stack's observability, live: a real Prometheus scraping the embedded Triton, a
Router and the watching manager (``reconcile --watch --metrics-port``) during a rollout.

One Triton, one Prometheus and one manager serve the module's first tests: a canary at
50% gets Router traffic while two analysis steps read their figures through PromQL, then
traffic stops and every source is scraped once more, so exact comparisons hold.
The Router and the manager address Triton as ``dns://localhost:PORT`` (a DNS fleet).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from repo_manager import Router
from repo_manager.analysis import PromQLProvider, ScrapeProvider
from repo_manager.gates import LiveGates
from repo_manager.repository import ModelRepository
from repo_manager.rollout import AnalysisPlan, RolloutManager
from repo_manager.server import free_port
from repo_manager.state import RolloutState
from repo_manager.storage import LocalStorage
from repo_manager.triton import TritonFleet
from tests.dashboard import dashboard_metrics, dashboard_queries, exported_names
from tests.integration.conftest import CLI, Stack, running_stack, serving_router_metrics
from tests.integration.prometheus import Prometheus
from tests.integration.traffic import client_traffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MODEL = "observed"  # its own name: Router metrics are process-wide
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/repo-manager.json"


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


def wait_for_metrics(url: str, process: subprocess.Popen[Any], timeout: float = 60) -> str:
    """The endpoint's text once it answers (fails early if its process exited)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fetch(url)
        except OSError:
            assert process.poll() is None, f"exited {process.returncode}"
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.1)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


def watch(repository: Path, port: int, *, url: str, log: Path) -> subprocess.Popen[Any]:
    """``reconcile --watch`` serving its metrics on ``port`` (stdout and stderr to ``log``)."""
    command = [*CLI, "--repository", str(repository), "--url", url, "reconcile"]
    with log.open("ab") as output:
        return subprocess.Popen(
            [*command, "--watch", "--interval", "0.5", "--metrics-port", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "YOLO_OFFLINE": "1"},
        )


def stop(process: subprocess.Popen[Any]) -> int:
    """SIGTERM, as Kubernetes and compose stop the manager; its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return int(process.returncode)


@dataclass(kw_only=True)
class Observed:
    stack: Stack
    prometheus: Prometheus
    triton_metrics: str
    router_metrics: str
    manager_metrics: str
    served: Counter[str]
    state: RolloutState


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory, trained_detector: Path, prometheus_binary: str
) -> Iterator[Observed]:
    root = tmp_path_factory.mktemp("observed")
    with ExitStack() as cleanup:
        stack = cleanup.enter_context(running_stack(root))
        fleet_name = f"dns://localhost:{stack.server.ports.grpc}"
        stack.publish(MODEL, "1", trained_detector)
        stack.publish(MODEL, "2", trained_detector, "--canary-weight", "50")
        router_metrics = cleanup.enter_context(serving_router_metrics())
        port = free_port()
        manager = watch(stack.repository, port, url=fleet_name, log=root / "manager.log")
        cleanup.callback(stop, manager)
        manager_metrics = f"http://127.0.0.1:{port}/metrics"
        wait_for_metrics(manager_metrics, manager)
        prometheus = Prometheus(
            binary=prometheus_binary,
            workdir=root,
            targets=[stack.server.metrics_url, router_metrics, manager_metrics],
        )
        prometheus.start()
        cleanup.callback(prometheus.stop)
        rollout = RolloutManager(
            ModelRepository(LocalStorage(stack.repository)), TritonFleet([stack.url])
        )
        cleanup.callback(rollout.fleet.close)
        provider = PromQLProvider(prometheus.url)
        plan = AnalysisPlan(
            steps=(50, 100), gates=LiveGates(max_latency_ratio=10.0, max_p99_ratio=100.0)
        )
        image = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
        with (
            Router(MODEL, url=fleet_name, repository=str(stack.repository)) as router,
            # Judged by the analysis: as many requests as the machine gives in each interval.
            client_traffic(lambda _: router.detect(image).version, threads=2, pause=0.0) as record,
        ):
            rollout.start_analysis(MODEL, plan)
            time.sleep(2)
            rollout.advance(MODEL, provider)  # baseline, read through PromQL
            time.sleep(3)
            state = rollout.advance(MODEL, provider)  # judged on PromQL figures
        assert record.failures == []
        time.sleep(1)  # the manager's next pass sees the last state
        prometheus.scrapes_after(time.time())
        yield Observed(
            stack=stack,
            prometheus=prometheus,
            triton_metrics=stack.server.metrics_url,
            router_metrics=router_metrics,
            manager_metrics=manager_metrics,
            served=record.versions_since(0),
            state=state,
        )


def test_promql_through_the_metrics_provider_returns_the_canarys_per_version_figures(
    observed: Observed,
) -> None:
    through_prometheus = PromQLProvider(observed.prometheus.url).snapshot(MODEL)
    direct = ScrapeProvider([observed.triton_metrics, observed.router_metrics]).snapshot(MODEL)
    served = observed.served
    assert served["1"] > 20 and served["2"] > 20, served
    # Quiescent and scraped since: Prometheus holds exactly what the sources say.
    for key in ("router_ok", "router_latency_count", "triton_success", "triton_duration_us"):
        assert through_prometheus[key] == direct[key], key
    canary_served = through_prometheus["router_ok"]["2"] + through_prometheus[
        "router_fallback_served"
    ].get("2", 0.0)
    assert canary_served == served["2"]  # every request the Router sent to the canary
    assert through_prometheus["triton_success"]["2"] >= served["2"]
    assert through_prometheus["triton_failure"].get("2", 0.0) == 0
    assert through_prometheus["triton_duration_us"]["2"] > 0
    # The rollout's own step was judged on those PromQL figures, per source.
    last = observed.state.analysis["last"] if observed.state.analysis else {}
    assert last["outcome"] == "pass", last
    assert {g["name"] for g in last["gates"]} >= {
        "max_error_rate[triton]",
        "max_error_rate[router]",
    }
    assert observed.state.weights == {"1": 0, "2": 100}


def test_the_watching_manager_serves_every_models_rollout_state_and_its_own_health(
    observed: Observed,
) -> None:
    text = fetch(observed.manager_metrics)
    assert value(text, "repo_manager_rollout_phase", model=MODEL, phase="analyzing") == 1
    assert value(text, "repo_manager_rollout_phase", model=MODEL, phase="progressing") == 0
    assert value(text, "repo_manager_canary_weight", model=MODEL) == 100
    assert value(text, "repo_manager_stable_version", model=MODEL) == 1
    assert value(text, "repo_manager_canary_version", model=MODEL) == 2
    assert value(text, "repo_manager_gate_value", model=MODEL, gate="max_error_rate[router]") == 0
    assert value(text, "repo_manager_gate_passed", model=MODEL, gate="max_error_rate[triton]") == 1
    assert value(text, "repo_manager_reconcile_runs_total", outcome="ok") >= 2
    assert value(text, "repo_manager_reconcile_unreachable_servers") == 0
    assert value(text, "repo_manager_fleet_servers") == 1  # dns://localhost: one address
    age = time.time() - value(text, "repo_manager_reconcile_last_success_timestamp_seconds")
    assert 0 <= age < 30
    assert value(text, "repo_manager_reconcile_duration_seconds_count") >= 2
    # The same through Prometheus, from the manager's target.
    instance = observed.manager_metrics.split("//")[1].split("/")[0]
    weight = PromQLProvider(observed.prometheus.url).query(
        f'repo_manager_canary_weight{{model="{MODEL}", instance="{instance}"}}'
    )
    assert [float(w["value"][1]) for w in weight] == [100.0]


def test_every_dashboard_query_returns_series_of_the_observed_model(observed: Observed) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported: set[str] = set()
    for url in (observed.triton_metrics, observed.router_metrics, observed.manager_metrics):
        exported |= exported_names(fetch(url))
    named = dashboard_metrics(dashboard)
    assert len(named) >= 15
    assert named - exported == set()
    # Prometheus holds series of each, and every query is valid PromQL with data behind it.
    for name in sorted(named):
        assert observed.prometheus.query(f'count({{__name__="{name}"}})'), name
    # Every query selects series of the observed model: the manager's and the Routers'
    # series carry the public name, Triton's the versions model's (a dashboard that filtered
    # both by "MODEL.versions" parsed and named exported metrics, and 15 of its 23 queries
    # could never show anything).
    # $model as Grafana writes it into a regex matcher: one model, or "All" (every value of
    # the variable's query, as a group of alternatives).
    values = [v["metric"]["model"] for v in observed.prometheus.query("repo_manager_canary_weight")]
    assert MODEL in values
    empty = []
    for model in (MODEL, "(" + "|".join(sorted(values)) + ")"):
        for expr in dashboard_queries(dashboard):
            concrete = expr.replace("$__rate_interval", "1m").replace("$model", model)
            if not observed.prometheus.query(concrete):  # raises on a PromQL syntax error
                empty.append((model, expr))
    assert empty == []


def test_traffic_command_sends_load_by_the_weights_and_serves_router_metrics(
    observed: Observed,
) -> None:
    port = free_port()
    command = [*CLI, "--repository", str(observed.stack.repository), "--url", observed.stack.url]
    traffic = subprocess.Popen(
        [
            *command,
            "traffic",
            MODEL,
            *("--rate", "40", "--duration", "3s", "--imgsz", "160"),
            "--metrics-port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 30
        # The endpoint answers before the first request lands, the series absent or at 0
        # until then: wait for a count.
        v2_ok = (
            "repo_manager_router_requests_total",
            frozenset({"model": MODEL, "version": "2", "outcome": "ok"}.items()),
        )
        while not samples(wait_for_metrics(url, traffic)).get(v2_ok):
            assert time.monotonic() < deadline, "the traffic's Router metrics never counted v2"
            time.sleep(0.2)
        out, err = traffic.communicate(timeout=60)
    finally:
        stop(traffic)
    assert traffic.returncode == 0, err
    assert "v2:" in out and "v1:" not in out and "; 0 failed" in out  # canary at 100%
    served = int(out.split(" requests in ")[0].rsplit(" ", 1)[-1])
    assert 60 <= served <= 125  # 40/s for 3 s, at most (a rate, not a burst)


# -- the manager alone ------------------------------------------------------------------------


def test_reconcile_watch_loads_the_models_onto_a_restarted_triton_and_counts_it(
    stack: Stack, trained_detector: Path, tmp_path: Path
) -> None:
    stack.publish(MODEL, "1", trained_detector)
    port = free_port()
    fleet_name = f"dns://localhost:{stack.server.ports.grpc}"
    manager = watch(stack.repository, port, url=fleet_name, log=tmp_path / "m.log")
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        text = wait_for_metrics(url, manager)
        stack.restart(kill=True)  # comes back with nothing loaded (explicit mode)
        fleet = TritonFleet([stack.url])
        deadline = time.monotonic() + 60
        while {v.version for v in fleet.servers[0].versions(MODEL) if v.state == "READY"} != {"1"}:
            assert time.monotonic() < deadline and manager.poll() is None
            time.sleep(0.2)
        fleet.close()
        time.sleep(1)
        text = fetch(url)
    finally:
        code = stop(manager)
    assert code == 0, (tmp_path / "m.log").read_text()
    assert value(text, "repo_manager_reconcile_actions_total", model=MODEL) >= 1
    assert "loaded 1 on" in (tmp_path / "m.log").read_text()


def test_reconcile_watch_outlives_a_fleet_name_that_does_not_resolve(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "m.log"
    manager = watch(tmp_path, port, url="dns://no-such-triton.invalid:8001", log=log)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 60
        while 'repo_manager_reconcile_runs_total{outcome="error"} 2.0' not in (
            wait_for_metrics(url, manager)
        ):
            assert time.monotonic() < deadline and manager.poll() is None
            time.sleep(0.2)
    finally:
        code = stop(manager)
    assert code == 0
    lines = log.read_text().splitlines()
    assert lines and all(
        line.startswith("error: cannot resolve Triton fleet name no-such-triton.invalid")
        for line in lines
    ), lines


def test_a_taken_metrics_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                *CLI,
                "--repository",
                str(tmp_path),
                "reconcile",
                "--watch",
                "--metrics-port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: cannot serve metrics on 127.0.0.1:{port}: ")
    assert "in use" in done.stderr and len(done.stderr.strip().splitlines()) == 1
