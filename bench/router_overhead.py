"""What routing through ``Router`` costs, measured side by side with direct tritonclient.

Starts the embedded tritonserver with a small python-backend model (or uses ``--url``,
whose server must already serve ``--model``), then alternates ``Router.infer`` and a direct
``InferenceServerClient.infer`` on the same server, model, version and input: each round
runs both, in alternating order, so drift on a shared machine hits both sides alike. Both
use plain gRPC (``shared_memory=False``): this measures the routing layer, not transport.
Prints median and p99 latency of each and their ratios (goal: <= 1.02), then the cost of
one routing decision (goal: <= 1 µs), without and with a cohort rule side by side (the
same calls, in alternating order, best of 5 each).

    python bench/router_overhead.py [--requests 5000] [--url HOST:PORT --model M] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import timeit
from contextlib import ExitStack
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from tritonclient.utils import triton_to_np_dtype  # noqa: E402

from bench.common import bench_stack, interleaved, load_now, machine, median, met, pct  # noqa: E402
from repo_manager import Router  # noqa: E402
from repo_manager.names import versions_model_name  # noqa: E402
from repo_manager.phases import Phase  # noqa: E402
from repo_manager.routing import RoutePlan  # noqa: E402
from repo_manager.state import RolloutState, RoutingTable, state_key  # noqa: E402
from repo_manager.storage import LocalStorage  # noqa: E402

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


def decision_ns(plan: RoutePlan, key: object, number: int) -> float:
    timer = timeit.Timer("choose(key)", globals={"choose": plan.choose, "key": key})
    return min(timer.repeat(repeat=5, number=number)) / number * 1e9


def side_by_side(
    plain: RoutePlan, cohort: RoutePlan, key: object, attributes: object, number: int
) -> tuple[float, float]:
    """ns per decision of ``plain`` (no attributes) and ``cohort``: best of 5 rounds, the
    two timed in turn within each round so that load on the shared cores hits both."""
    timers = [
        timeit.Timer(
            "choose(key, attributes)",
            globals={"choose": p.choose, "key": key, "attributes": a},
        )
        for p, a in ((plain, None), (cohort, attributes))
    ]
    best = [float("inf"), float("inf")]
    for _ in range(5):
        for i, timer in enumerate(timers):
            best[i] = min(best[i], timer.timeit(number) / number * 1e9)
    return best[0], best[1]


#: The cohort rules timed: attributes only, and attributes with an hour window (its answer
#: cached until the next hour boundary).
COHORT_RULES = (
    "line in (3,4) and device=crane",
    "line in (3,4) and hour in 0..24 tz Europe/Berlin",
)
INSIDE = {"line": "3", "device": "crane", "camera": "17"}
OUTSIDE = {"line": "5", "device": "crane", "camera": "17"}


def cohort_decisions(n: int) -> None:
    """The decision with a cohort rule beside the plain one, with and without a key,
    matching and not; each pair measured back to back."""
    plain = RoutePlan.build("m", RoutingTable(**TABLE))
    print(f"routing decision with a cohort rule, best of 5 x {n:,} calls (goal <= 1000 ns):")
    for rule in COHORT_RULES:
        cohort = RoutePlan.build("m", RoutingTable(**TABLE, cohort={"rule": rule, "weight": 50}))
        print(f"  rule {rule!r}")
        for label, key in (("no key", None), ("str key", "camera-17")):
            for where, attributes in (("matching", INSIDE), ("not matching", OUTSIDE)):
                base, ns = side_by_side(plain, cohort, key, attributes, n)
                print(
                    f"    {label:8} {where:13} {ns:6.0f} ns ({met(ns, 1000)})   plain {base:4.0f} "
                    f"ns   ratio {ns / base:.2f}"
                )
    print(f"  {load_now()}")


TABLE: dict[str, Any] = {
    "model": "m",
    "stable": "1",
    "canary": "2",
    "weights": {"1": 90, "2": 10},
    "generation": 1,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="use this Triton (gRPC) instead of starting one")
    parser.add_argument("--model", default="bench_identity")
    parser.add_argument("--version", default="1")
    parser.add_argument("--width", type=int, default=16, help="input width of the bench model")
    parser.add_argument("--requests", type=int, default=5000, help="rounds (each side)")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="a few rounds: a smoke run")
    parser.add_argument(
        "--decisions-only", action="store_true", help="time only the routing decisions"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.warmup, args.decisions = 200, 20, 10_000
    print(machine())
    if args.decisions_only:
        cohort_decisions(args.decisions)
        return

    with tempfile.TemporaryDirectory(prefix="router-bench-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        url = args.url
        # The Router calls the versions model behind the published name, pinned.
        triton_model = versions_model_name(args.model)
        if url is None:
            started = stack.enter_context(bench_stack(root))
            version_dir = started.repository / triton_model / args.version
            version_dir.mkdir(parents=True)
            (version_dir / "model.py").write_text(IDENTITY_MODEL)
            url = started.url
        direct = stack.enter_context(grpcclient.InferenceServerClient(url))
        if args.url is None:
            direct.load_model(triton_model, config=bench_config(triton_model, args.width))
        # The Router follows a state document; 100% to the benched version.
        state = RolloutState(
            model=args.model,
            phase=Phase.INITIALIZED,
            stable=args.version,
            weights={args.version: 100},
            generation=1,
        )
        LocalStorage(root).write_bytes_atomic(state_key(args.model), state.to_json())
        inputs = inputs_for(direct, triton_model, args.version)
        router = stack.enter_context(Router(args.model, url, root, shared_memory=False))
        sides = [
            lambda: router.infer(inputs),
            lambda: direct.infer(triton_model, inputs, model_version=args.version),
        ]
        interleaved(sides, args.warmup)
        routed, plain = interleaved(sides, args.requests)

    med_r, med_d = median(routed), median(plain)
    ratio_med, ratio_p99 = med_r / med_d, pct(routed, 99) / pct(plain, 99)
    print(f"server {url}  model {args.model} v{args.version}  rounds {args.requests}; {load_now()}")
    print(
        f"  direct tritonclient  median {med_d / 1e3:8.1f} µs   p99 {pct(plain, 99) / 1e3:8.1f} µs"
    )
    print(
        f"  Router.infer         median {med_r / 1e3:8.1f} µs   p99 {pct(routed, 99) / 1e3:8.1f} µs"
    )
    print(
        f"  ratio Router/direct  median {ratio_med:.3f} ({met(ratio_med, 1.02)})   p99 "
        f"{ratio_p99:.3f} ({met(ratio_p99, 1.02)})   goal <= 1.02; median overhead "
        f"{(med_r - med_d) / 1e3:+.1f} µs"
    )

    plan = RoutePlan.build("m", RoutingTable(**TABLE))
    n = args.decisions
    print(f"routing decision, 90/10 table, best of 5 x {n:,} calls (goal <= 1000 ns):")
    for label, key in (
        ("weighted random", None),
        ("sticky str key", "camera-17"),
        ("sticky int key", 123456789),
    ):
        ns = decision_ns(plan, key, n)
        print(f"  {label:20} {ns:6.0f} ns ({met(ns, 1000)})")
    cohort_decisions(n)


if __name__ == "__main__":
    main()
