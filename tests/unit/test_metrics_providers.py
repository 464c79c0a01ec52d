"""Both metrics providers over real loopback HTTP servers; unreachable is its own error."""

from __future__ import annotations

import json

import pytest

from repo_manager.analysis import PromQLProvider, ScrapeProvider, judge
from repo_manager.errors import MetricsUnavailableError
from repo_manager.gates import LiveGates
from repo_manager.server import free_port

# Triton counts the versions model (what the Router calls pinned); the public name's own
# series (the alias, unpinned clients) are other traffic and must not be summed in.
TRITON_TEXT = """# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="m.versions",version="1"} 90
nv_inference_request_success{model="m.versions",version="2"} 8
nv_inference_request_success{model="m",version="1"} 500
nv_inference_request_success{model="other",version="2"} 1000
# HELP nv_inference_request_failure Number of failed inference requests
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="m.versions",reason="BACKEND",version="2"} 2
# HELP nv_inference_request_duration_us Cumulative inference request duration
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="m.versions",version="1"} 900000
nv_inference_request_duration_us{model="m.versions",version="2"} 300000
"""


def test_scrape_sums_one_models_series_by_version(http_server) -> None:  # type: ignore[no-untyped-def]
    address, _, responses = http_server
    responses["/metrics"] = TRITON_TEXT.encode()
    snapshot = ScrapeProvider([address]).snapshot("m")
    assert snapshot["triton_success"] == {"1": 90.0, "2": 8.0}
    assert snapshot["triton_failure"] == {"2": 2.0}
    verdict = judge(snapshot, {}, stable="1", canary="2", gates=LiveGates(min_requests=5))
    assert verdict.outcome == "fail"  # 20% errors and 3x latency
    names = {g.name: g for g in verdict.gates}
    assert names["max_error_rate[triton]"].value == pytest.approx(0.2)
    assert names["max_latency_ratio[triton]"].value == pytest.approx(3.0)


def vector_answer(result: list[dict[str, object]]) -> bytes:
    """What Prometheus' ``/api/v1/query`` answers with an instant vector ``result``."""
    data = {"resultType": "vector", "result": result}
    return json.dumps({"status": "success", "data": data}).encode()


def test_promql_provider_speaks_the_prometheus_query_api(http_server) -> None:  # type: ignore[no-untyped-def]
    address, seen, responses = http_server
    responses["/api/v1/query"] = vector_answer(
        [
            {"metric": {"version": "1"}, "value": [1700000000.0, "50"]},
            {"metric": {"version": "2"}, "value": [1700000000.0, "5"]},
        ]
    )
    snapshot = PromQLProvider(f"http://{address}").snapshot("m")
    assert snapshot["triton_success"] == {"1": 50.0, "2": 5.0}
    assert any(
        q == 'query=sum by (version) (nv_inference_request_success{model="m.versions"})'
        for q in seen
    )
    assert any('outcome="fallback"' in q for q in seen)


@pytest.mark.parametrize("kind", ["scrape", "promql"])
def test_an_unreachable_source_is_a_metrics_error(kind: str) -> None:
    address = f"127.0.0.1:{free_port()}"  # nobody listens
    provider = ScrapeProvider([address]) if kind == "scrape" else PromQLProvider(address)
    with pytest.raises(MetricsUnavailableError, match="unreachable"):
        provider.snapshot("m")


def test_a_prometheus_error_answer_is_a_metrics_error(http_server) -> None:  # type: ignore[no-untyped-def]
    address, _, responses = http_server
    responses["/api/v1/query"] = json.dumps({"status": "error", "error": "bad query"}).encode()
    with pytest.raises(MetricsUnavailableError, match="bad query"):
        PromQLProvider(address).snapshot("m")
