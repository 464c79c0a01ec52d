"""Triton python-backend model of a weighted public name: each request that names no
version is forwarded (BLS) to the versions model, pinned to the version it draws.

Copied into the public name's ``1/`` folder with ``routing_split.py`` and
``routing_cohort.py`` (the Router's own split and cohort rules, ``repo_manager/routing/``)
beside it; imports nothing of repo_manager, which a stock tritonserver image does not have.

Config parameters (strings) it reads:
    versions_model   the Triton model holding the version folders (``yolov8s.versions``)
    routing          the routing table, JSON: {"stable", "canary", "weights", "shadow",
                     "cohort": {"rule", "weight"}}

A request parameter ``key`` (tritonclient ``infer(..., parameters={"key": "cam-17"})``)
makes the choice sticky: same key, same version, by the Router's rule. Every other request
parameter is an attribute the cohort rule reads (``parameters={"key": "cam-17", "line":
"3"}``): a request the rule matches goes to the canary at the cohort's weight, the others
by ``weights``, as through the Router; the counters then carry ``cohort="in"``/``"out"``.
A canary request that fails is sent again to stable, and counted
(``repo_manager_unpinned_retries_total``).
On an end-to-end output (``[B, K, 6]``: x1 y1 x2 y2 score class) it counts each answered
image's boxes scoring at least ``_COUNT_CONF`` per version, under the Router's detection
metric names, so the detection gates judge clients that call Triton directly too: a
comparison per row, cheap. A raw output (``[B, 4+nc, N]``) is not counted: its boxes exist
only after NMS, a sort and an IoU matrix per image that would cost each request about what
the client's own decoding does.
With a ``shadow`` share, that share of the requests stable answered is also sent to the
canary in the background (a copy of the inputs; the user's answer never waits on it, and
at most ``_SHADOW_IN_FLIGHT`` mirrors run at once: more are dropped and counted), counted
under the Router's shadow metric names so the analysis's ``shadow`` source reads both.
Weights change by a reload of this model with a new ``routing`` (the manager does it on
every server): Triton serves with the old instance until the new one is ready.

Tensors are passed through as they arrived: with ``FORCE_CPU_ONLY_INPUT_TENSORS`` "no"
a GPU input stays on the GPU through the BLS call, and the versions model's outputs are
returned as they came.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from typing import Any

import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import routing_cohort  # the files beside this one
import routing_split

_random = random.random
#: Mirrors running at once per instance; a slow canary makes the rest be dropped (counted).
_SHADOW_IN_FLIGHT = 4
#: The Router's shadow metric names (``repo_manager/metrics/metric_names.py``).
_SHADOW_REQUESTS = "repo_manager_router_shadow_requests"
_SHADOW_LATENCY = "repo_manager_router_shadow_latency_seconds"
#: The Router's detection counters (images, boxes, boxes squared, scores), in that order.
_DETECTIONS = (
    "repo_manager_router_detect_images_total",
    "repo_manager_router_detections_total",
    "repo_manager_router_detections_squared_total",
    "repo_manager_router_detection_scores_total",
)
#: Lowest score of a counted box: Ultralytics' ``predict`` default, and ``Router.detect``'s.
_COUNT_CONF = 0.25


def _parameter(config: dict[str, Any], key: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    if not value:
        raise ValueError(f"weighted public name: config parameter {key} is missing")
    return str(value)


def _key_bytes(key: object) -> bytes:
    """A ``key`` request parameter as the Router hashes it (an int as its decimal text)."""
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key).encode()
    raise ValueError(f"request parameter key must be a string or an integer, not {key!r}")


class TritonPythonModel:
    """One instance: the routing table of its config, one BLS call per request."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.target = _parameter(config, "versions_model")
        table = json.loads(_parameter(config, "routing"))
        self.stable = str(table["stable"])
        self.canary = None if table.get("canary") is None else str(table["canary"])
        weights = {str(k): int(v) for k, v in table.get("weights", {}).items()}
        self.shadow = float(table.get("shadow", 0.0)) if self.canary is not None else 0.0
        self.mirrors: set[asyncio.Task[None]] = set()
        _, versions, thresholds = routing_split.layout(self.stable, self.canary, weights)
        self.versions, self.thresholds = tuple(versions), tuple(thresholds)
        self._cohort(table.get("cohort"))
        self.input_names = [item["name"] for item in config["input"]]
        self.output_names = [item["name"] for item in config["output"]]
        labels = {"model": self.name}
        # Kept on the instance: a family deleted before its metrics breaks every increment.
        self.family = pb_utils.MetricFamily(
            name="repo_manager_unpinned_requests_total",
            description="Unpinned requests the weighted public name forwarded, by version "
            "and outcome (ok, retried: answered by stable after the canary failed, error)",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.counters = {
            (v, outcome, c): self.family.Metric(
                labels={**labels, **self._labels(c), "version": v, "outcome": outcome}
            )
            for v in self._counted()
            for outcome in ("ok", "retried", "error")
            for c in self.cohort_labels
        }
        self.shadow_counters: dict[str, Any] = {}
        if self.shadow:
            self._shadow_metrics(labels)
        dims = [int(d) for d in config["output"][0].get("dims", [])]
        self.box_counters: dict[tuple[str, str], tuple[Any, ...]] = {}
        if len(dims) == 2 and dims[-1] == 6:  # end-to-end: boxes can be counted here
            self._detection_metrics(labels)

    def _cohort(self, cohort: dict[str, Any] | None) -> None:
        """The cohort's rule, compiled once, and its layout (the canary at its weight)."""
        self.cohort: Any = None
        self.cohort_labels: tuple[str, ...] = ("",)
        self.inside_versions, self.inside_thresholds = self.versions, self.thresholds
        if not cohort or self.canary is None:
            return
        try:
            self.cohort = routing_cohort.parse(str(cohort["rule"]))
        except ValueError as exc:  # e.g. a time zone this server's tz database lacks
            # As the Router does: nobody in the cohort, said in the log; the model serves.
            pb_utils.Logger.log_warn(f"{self.name}: {exc}; nobody is in the cohort")
            return
        weight = int(cohort["weight"])
        inside, bounds = routing_split.cohort_layout(self.stable, self.canary, weight)
        self.inside_versions, self.inside_thresholds = tuple(inside), tuple(bounds)
        self.cohort_labels = ("in", "out")

    def _counted(self) -> tuple[str, ...]:
        """Versions with counters: every version with a share, and stable (retries)."""
        versions = dict.fromkeys((*self.versions, *self.inside_versions, self.stable))
        return tuple(versions)

    @staticmethod
    def _labels(cohort: str) -> dict[str, str]:
        """The cohort label of a series (none without a rule: the series of before)."""
        return {"cohort": cohort} if cohort else {}

    def _detection_metrics(self, labels: dict[str, str]) -> None:
        self.detection_families = tuple(
            pb_utils.MetricFamily(
                name=name,
                description="What the weighted public name's end-to-end answers held, per "
                "version (as Router.detect counts it)",
                kind=pb_utils.MetricFamily.COUNTER,
            )
            for name in _DETECTIONS
        )
        for version in self._counted():
            for cohort in self.cohort_labels:
                self.box_counters[(version, cohort)] = tuple(
                    family.Metric(labels={**labels, **self._labels(cohort), "version": version})
                    for family in self.detection_families
                )

    def _count_boxes(self, version: str, cohort: str, response: Any) -> None:
        """Add an answered batch's boxes to ``version``'s detection counters."""
        counters = self.box_counters.get((version, cohort))
        tensor = pb_utils.get_output_tensor_by_name(response, self.output_names[0])
        if counters is None or tensor is None or not tensor.is_cpu():
            return  # a GPU output stays on the GPU: not counted
        scores = tensor.as_numpy()[..., 4]
        kept = scores >= _COUNT_CONF
        per_image = kept.sum(axis=-1)
        images, boxes, squared, total = counters
        images.increment(int(per_image.size))
        boxes.increment(int(per_image.sum()))
        squared.increment(int((per_image * per_image).sum()))
        total.increment(float(scores[kept].sum()))

    def _shadow_metrics(self, labels: dict[str, str]) -> None:
        assert self.canary is not None
        labels = {**labels, "version": self.canary}
        self.shadow_families = (
            pb_utils.MetricFamily(
                name=_SHADOW_REQUESTS,
                description="Requests mirrored to the canary, by outcome",
                kind=pb_utils.MetricFamily.COUNTER,
            ),
            pb_utils.MetricFamily(
                name=f"{_SHADOW_LATENCY}_sum",
                description="Seconds mirrored requests took, summed",
                kind=pb_utils.MetricFamily.COUNTER,
            ),
            pb_utils.MetricFamily(
                name=f"{_SHADOW_LATENCY}_count",
                description="Mirrored requests timed",
                kind=pb_utils.MetricFamily.COUNTER,
            ),
        )
        requests, seconds, timed = self.shadow_families
        self.shadow_counters = {
            outcome: requests.Metric(labels={**labels, "outcome": outcome})
            for outcome in ("ok", "error", "dropped")
        }
        self.shadow_counters["latency_sum"] = seconds.Metric(labels=labels)
        self.shadow_counters["latency_count"] = timed.Metric(labels=labels)

    def _choose(self, request: Any) -> tuple[str, str]:
        """The version a request draws, and its cohort label ("in", "out"; "" for none)."""
        if self.cohort is None and len(self.versions) == 1:
            return self.versions[0], ""
        attributes = json.loads(request.parameters() or "{}")
        key = attributes.pop("key", None)
        versions, thresholds, cohort = self.versions, self.thresholds, ""
        if self.cohort is not None:
            cohort = "out"
            if self.cohort.matches(attributes, time.time()):
                versions, thresholds, cohort = self.inside_versions, self.inside_thresholds, "in"
        if len(versions) == 1:
            return versions[0], cohort
        at = _random() * 100.0 if key is None else routing_split.point(_key_bytes(key))
        return routing_split.choose(versions, thresholds, at), cohort

    async def _forward(self, inputs: list[Any], version: str) -> Any:
        call = pb_utils.InferenceRequest(
            model_name=self.target,
            model_version=int(version),
            inputs=inputs,
            requested_output_names=self.output_names,
        )
        return await call.async_exec()

    async def _one(self, request: Any) -> Any:
        try:
            version, cohort = self._choose(request)
        except ValueError as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        inputs = [pb_utils.get_input_tensor_by_name(request, n) for n in self.input_names]
        inputs = [t for t in inputs if t is not None]
        response = await self._forward(inputs, version)
        outcome = "ok"
        if response.has_error() and version != self.stable:
            self.counters[(version, "retried", cohort)].increment(1)
            version, outcome = self.stable, "retried"
            response = await self._forward(inputs, version)
        if response.has_error():
            self.counters[(version, "error", cohort)].increment(1)
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(
                    f"{self.target} version {version}: {response.error().message()}"
                )
            )
        self._count_boxes(version, cohort, response)
        if outcome == "ok":
            self.counters[(version, "ok", cohort)].increment(1)
            if version == self.stable and self.shadow and _random() < self.shadow:
                self._mirror(inputs)
        return pb_utils.InferenceResponse(output_tensors=response.output_tensors())

    def _mirror(self, inputs: list[Any]) -> None:
        """Send a copy of a request stable answered to the canary, in the background."""
        # The request's tensors are released once execute returns: the mirror keeps a copy,
        # made on the host (the stub has no GPU array library: a GPU input is not mirrored).
        if len(self.mirrors) >= _SHADOW_IN_FLIGHT or not all(t.is_cpu() for t in inputs):
            self.shadow_counters["dropped"].increment(1)
            return
        copies = [pb_utils.Tensor(t.name(), t.as_numpy().copy()) for t in inputs]
        task = asyncio.get_running_loop().create_task(self._shadow(copies))
        self.mirrors.add(task)
        task.add_done_callback(self.mirrors.discard)

    async def _shadow(self, inputs: list[Any]) -> None:
        assert self.canary is not None
        started = time.perf_counter()
        try:
            response = await self._forward(inputs, self.canary)
            failed = response.has_error()
        except Exception:  # a mirror must never hurt the instance
            failed = True
        counters = self.shadow_counters
        if not failed:  # timed first: a reader that sees the outcome sees its time too
            counters["latency_sum"].increment(time.perf_counter() - started)
            counters["latency_count"].increment(1)
        counters["error" if failed else "ok"].increment(1)

    async def execute(self, requests: list[Any]) -> list[Any]:
        """Every request of a dynamic batch is forwarded at once and awaited together."""
        return list(await asyncio.gather(*(self._one(r) for r in requests)))
