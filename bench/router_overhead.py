"""What routing through ``Router`` costs, measured side by side with direct tritonclient.

Starts the embedded tritonserver with a small python-backend model (or uses ``--url``,
whose server must already serve ``--model``), then alternates ``Router.infer`` and a direct
``InferenceServerClient.infer`` on the same server, model, version and input: each round
runs both, in alternating order, so drift on a shared machine hits both sides alike. Prints
median and p99 latency of each and their ratios (goal: median ratio <= 1.03), then the
cost of one routing decision (goal: < 1 µs).

    .venv/bin/python bench/router_overhead.py [--requests 5000] [--url HOST:PORT --model M]

(after ``make setup``, which installs the package; from a bare checkout, ``PYTHONPATH=.``)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import triton_to_np_dtype

from repo_manager import Router
from repo_manager.phases import Phase
from repo_manager.routing import RoutePlan
from repo_manager.state import RolloutState, RoutingTable, state_key
from repo_manager.storage import LocalStorage

IDENTITY_MODEL = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
                    "y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
"""


def bench_config(name: str, width: int) -> str:
    return json.dumps(
        {
            "name": name,
            "backend": "python",
            "max_batch_size": 8,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [width]}],
            "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [width]}],
            "instance_group": [{"kind": "KIND_CPU", "count": 1}],
            "version_policy": {"specific": {"versions": [1]}},
        }
    )


def inputs_for(client: Any, model: str, version: str) -> list[grpcclient.InferInput]:
    """Zero tensors shaped from the model's metadata (dynamic dims set to 1)."""
    meta = client.get_model_metadata(model, version)
    tensors = []
    for spec in meta.inputs:
        shape = [1 if d < 0 else int(d) for d in spec.shape]
        tensor = grpcclient.InferInput(spec.name, shape, spec.datatype)
        tensor.set_data_from_numpy(np.zeros(shape, dtype=triton_to_np_dtype(spec.datatype)))
        tensors.append(tensor)
    return tensors


def side_by_side(
    a: Callable[[], object], b: Callable[[], object], rounds: int
) -> tuple[list[int], list[int]]:
    """Per-call latencies (ns) of a and b, one of each per round, order alternating."""
    ta: list[int] = []
    tb: list[int] = []
    clock = time.perf_counter_ns
    for i in range(rounds):
        for fn, out in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            start = clock()
            fn()
            out.append(clock() - start)
    return ta, tb


def p99(values: list[int]) -> float:
    return float(np.percentile(values, 99))


def decision_ns(plan: RoutePlan, key: object, number: int) -> float:
    timer = timeit.Timer("choose(key)", globals={"choose": plan.choose, "key": key})
    return min(timer.repeat(repeat=5, number=number)) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="use this Triton (gRPC) instead of starting one")
    parser.add_argument("--model", default="bench_identity")
    parser.add_argument("--version", default="1")
    parser.add_argument("--width", type=int, default=16, help="input width of the bench model")
    parser.add_argument("--requests", type=int, default=5000, help="rounds (each side)")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--decisions", type=int, default=1_000_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="router-bench-") as tmp:
        root = Path(tmp)
        server = None
        url = args.url
        if url is None:
            from repo_manager.server import EmbeddedTriton, ServerPorts

            repository = root / "model_repository"
            (repository / args.model / args.version).mkdir(parents=True)
            (repository / args.model / args.version / "model.py").write_text(IDENTITY_MODEL)
            server = EmbeddedTriton(repository, ports=ServerPorts.free(), log_path=root / "log")
            server.__enter__()
            url = server.grpc_url
        try:
            direct = grpcclient.InferenceServerClient(url)
            if server is not None:
                direct.load_model(args.model, config=bench_config(args.model, args.width))
            # The Router follows a state document; 100% to the benched version.
            state = RolloutState(
                model=args.model,
                phase=Phase.INITIALIZED,
                stable=args.version,
                weights={args.version: 100},
                generation=1,
            )
            LocalStorage(root).write_bytes_atomic(state_key(args.model), state.to_json())
            inputs = inputs_for(direct, args.model, args.version)
            with Router(args.model, url, root) as router:

                def via_router() -> object:
                    return router.infer(inputs)

                def via_client() -> object:
                    return direct.infer(args.model, inputs, model_version=args.version)

                side_by_side(via_router, via_client, args.warmup)
                routed, plain = side_by_side(via_router, via_client, args.requests)
            direct.close()
        finally:
            if server is not None:
                server.__exit__(None, None, None)

    med_r, med_d = statistics.median(routed), statistics.median(plain)
    print(f"server {url}  model {args.model} v{args.version}  rounds {args.requests}")
    print(f"  direct tritonclient  median {med_d / 1e3:8.1f} µs   p99 {p99(plain) / 1e3:8.1f} µs")
    print(f"  Router.infer         median {med_r / 1e3:8.1f} µs   p99 {p99(routed) / 1e3:8.1f} µs")
    print(
        f"  ratio Router/direct  median {med_r / med_d:.3f}   p99 {p99(routed) / p99(plain):.3f}"
        f"   (goal median <= 1.03; median overhead {(med_r - med_d) / 1e3:+.1f} µs)"
    )

    table = RoutingTable(
        model="m", stable="1", canary="2", weights={"1": 90, "2": 10}, generation=1
    )
    plan = RoutePlan.build("m", table)
    n = args.decisions
    print(f"routing decision, 90/10 table, best of 5 x {n:,} calls (goal < 1000 ns):")
    print(f"  weighted random      {decision_ns(plan, None, n):6.0f} ns")
    print(f"  sticky str key       {decision_ns(plan, 'camera-17', n):6.0f} ns")
    print(f"  sticky int key       {decision_ns(plan, 123456789, n):6.0f} ns")


if __name__ == "__main__":
    main()
