"""The three ways a request reaches a version, side by side (``bench/serving.py`` item 8).

For each image size two models are published from the same detector into one embedded
Triton, and these sides alternate round by round on one fixed input (batch 1,
tritonclient.grpc, no shared memory, so that only the server-side path differs):

    pinned     the versions model, pinned to stable (what the Router sends)
    alias      model A's public name, an ensemble pinning stable (unpinned clients,
               ``--unpinned stable``, the default)
    weighted   model B's public name in weighted mode (``policy --unpinned weighted``):
               a python BLS model that draws a version by the weights (stable 70%, a
               canary 30% that is the same export, so both draws cost the same) and
               forwards the request to the versions model pinned to it

The fixed cost of the weighted public name is split with Triton's own statistics: the
weighted model's time per request (queue, input, execute, output) minus the time of the
request it forwarded inside the versions model; what remains is the python stub round
trip and the BLS call.

Goals: median alias / pinned <= 1.02; weighted / pinned <= 1.10 at 640 px.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from bench.common import BenchStack, interleaved, load_now, median, met, pct

__all__ = ["public_names"]

#: The weighted side's canary share: a real draw, not the one-version shortcut.
CANARY_WEIGHT = 30


@dataclass(kw_only=True, frozen=True)
class _Stats:
    """Triton's cumulative statistics of one model (every version), in ns."""

    count: int
    spent: int  # queue + compute input + compute infer + compute output

    @classmethod
    def read(cls, client: Any, model: str) -> _Stats:
        count = spent = 0
        for entry in client.get_inference_statistics(model).model_stats:
            stats = entry.inference_stats
            count += stats.success.count
            spent += (
                stats.queue.ns
                + stats.compute_input.ns
                + stats.compute_infer.ns
                + stats.compute_output.ns
            )
        return cls(count=count, spent=spent)

    def per_request_ms(self, before: _Stats) -> float:
        return (self.spent - before.spent) / max(self.count - before.count, 1) / 1e6


def _inputs(client: Any, model: str) -> tuple[list[Any], list[Any]]:
    rng = np.random.default_rng(0)
    metadata = client.get_model_metadata(model)
    inputs = []
    for spec in metadata.inputs:
        shape = [1, *(int(d) for d in spec.shape[1:])]
        tensor = grpcclient.InferInput(spec.name, shape, spec.datatype)
        tensor.set_data_from_numpy(rng.random(shape, dtype=np.float32))
        inputs.append(tensor)
    outputs = [grpcclient.InferRequestedOutput(spec.name) for spec in metadata.outputs]
    return inputs, outputs


def public_names(stack: BenchStack, weights: Path, sizes: list[int], rounds: int) -> None:
    manager: Any = stack.manager
    print(
        f"\n[8] pinned vs the public name (alias) vs the weighted public name, batch 1, "
        f"{rounds} rounds alternating, one fixed input, tritonclient.grpc"
    )
    client = grpcclient.InferenceServerClient(stack.url)
    try:
        for imgsz in sizes:
            alias_model, weighted_model = f"public{imgsz}", f"weighted{imgsz}"
            stack.publish(alias_model, "1", weights, imgsz=imgsz)
            stack.publish(weighted_model, "1", weights, imgsz=imgsz)
            stack.publish(weighted_model, "2", weights, imgsz=imgsz, canary_weight=CANARY_WEIGHT)
            manager.set_unpinned(weighted_model, "weighted")
            status = manager.status(alias_model)
            versions = status["versions_model"]
            weighted_versions = manager.status(weighted_model)["versions_model"]
            inputs, outputs = _inputs(client, alias_model)
            sides = {
                "pinned": partial(
                    client.infer, versions, inputs, model_version="1", outputs=outputs
                ),
                "alias": partial(client.infer, alias_model, inputs, outputs=outputs),
                "weighted": partial(client.infer, weighted_model, inputs, outputs=outputs),
            }
            first = outputs[0].name()
            answers = [fn().as_numpy(first) for fn in sides.values()]
            same = all(np.array_equal(answers[0], a) for a in answers[1:])
            interleaved(list(sides.values()), max(10, rounds // 10))
            before = {m: _Stats.read(client, m) for m in (weighted_model, weighted_versions)}
            times = dict(zip(sides, interleaved(list(sides.values()), rounds), strict=True))
            after = {m: _Stats.read(client, m) for m in (weighted_model, weighted_versions)}
            pinned = median(times["pinned"])
            print(f"  {imgsz} px: same answers on every side: {same}; {load_now()}")
            for label, values in times.items():
                print(
                    f"    {label:9} median {median(values) / 1e6:8.2f} ms, p90 "
                    f"{pct(values, 90) / 1e6:8.2f} ms, median / pinned "
                    f"{median(values) / pinned:.3f}"
                )
            alias_ratio = median(times["alias"]) / pinned
            weighted_ratio = median(times["weighted"]) / pinned
            outer = after[weighted_model].per_request_ms(before[weighted_model])
            inner = after[weighted_versions].per_request_ms(before[weighted_versions])
            print(
                f"    fixed cost of the weighted name per request: "
                f"{(median(times['weighted']) - pinned) / 1e6:+.2f} ms (medians); in Triton's "
                f"statistics the weighted model spent {outer:.2f} ms a request, {inner:.2f} ms "
                f"of it in the forwarded request, so {outer - inner:.2f} ms is the python "
                f"stub round trip + BLS call"
            )
            print(
                f"    goal median alias/pinned {alias_ratio:.3f} <= 1.02: "
                f"{met(alias_ratio, 1.02)}; weighted/pinned {weighted_ratio:.3f} <= 1.10 "
                f"(the goal is at 640 px): {met(weighted_ratio, 1.10)}"
            )
    finally:
        client.close()
