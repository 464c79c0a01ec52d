"""Triton python-backend model: runs the version folder's ``model.onnx`` with onnxruntime.

Copied unchanged into every ``--format python`` version folder. Input and output names
and types come from the model config Triton hands over, never from this file, so one file
serves every detector. All requests of a dynamic batch are concatenated into a single
onnxruntime run and the results split back per request: one large run is much cheaper
than many small ones.

Config parameters (strings) it reads:
    onnxruntime_intra_op_threads   threads inside an operator (default: CPUs, at most 4)
    onnxruntime_inter_op_threads   threads across operators (default: 1)
    onnxruntime_allow_spinning     "1" (default) or "0": whether idle onnxruntime threads
                                   spin waiting for work. On a machine of its own spinning
                                   is faster (no wake-up per operator: 23 vs 29 ms at 320
                                   px on 2 cores); on a host crowded by other work "0" is
                                   (BENCHMARKS.md, item 2 levers)
    tensor_transfer                "numpy" (default) or "dlpack": how inputs reach
                                   onnxruntime from the stub's shared memory. Outputs
                                   always go through ``pb_utils.Tensor(name, array)``:
                                   ``Tensor.from_dlpack`` of a numpy 1.x array kills the
                                   2.51 stub (capsule name mismatch in the deleter).
Small defaults keep a 2-core machine responsive: Triton's own threads need CPU too.
A server's environment can change the default of a number parameter for every model it
runs, without editing a config: ``REPO_MANAGER_`` + the name in capitals (e.g.
``REPO_MANAGER_ONNXRUNTIME_ALLOW_SPINNING=0`` on a crowded host); a config's own value wins.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

MODEL_FILE = "model.onnx"
MAX_DEFAULT_INTRA_OP_THREADS = 4
DEFAULT_ALLOW_SPINNING = 1
#: Prefix of the environment variables that give a number parameter's server-wide default.
DEFAULT_ENV_PREFIX = "REPO_MANAGER_"
#: When set (``bench/serving.py --profile``), every execute appends a line
#: "MODEL RUN_MS EXECUTE_MS" to this file: onnxruntime alone vs the whole execute, the
#: split that Triton's own statistics cannot show.
TIMINGS_ENV = "REPO_MANAGER_BACKEND_TIMINGS"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects container/cgroup pinning
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _int_parameter(config: dict[str, Any], key: str, default: int) -> int:
    """The config's value of ``key``, else the server's environment's, else ``default``."""
    raw = config.get("parameters", {}).get(key, {}).get("string_value", "")
    if raw.strip() == "":
        raw = os.environ.get(DEFAULT_ENV_PREFIX + key.upper(), "")
    if raw.strip() == "":
        return default
    value = int(raw)
    if value < 0:
        raise ValueError(f"parameter {key} must be >= 0, got {raw!r}")
    return value


def _shape_fits(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    """A batched shape matches config dims (-1 in the config accepts any size)."""
    return len(shape) == len(dims) + 1 and all(
        want in (-1, got) for got, want in zip(shape[1:], dims, strict=True)
    )


class TritonPythonModel:
    """One model instance: an onnxruntime session over the version's ONNX file."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.input_names = [item["name"] for item in config["input"]]
        self.input_dtypes = [
            pb_utils.triton_string_to_numpy(item["data_type"]) for item in config["input"]
        ]
        self.input_dims = [tuple(int(d) for d in item["dims"]) for item in config["input"]]
        self.output_names = [item["name"] for item in config["output"]]
        self.model_name = str(config.get("name", ""))
        self.timings = os.environ.get(TIMINGS_ENV) or None
        self.run_ms = 0.0
        self.output_dtypes = [
            pb_utils.triton_string_to_numpy(item["data_type"]) for item in config["output"]
        ]

        path = Path(args["model_repository"]) / args["model_version"] / MODEL_FILE
        if not path.is_file():  # e.g. a repository copied elsewhere: fall back to our folder
            path = Path(__file__).resolve().with_name(MODEL_FILE)

        options = ort.SessionOptions()
        options.intra_op_num_threads = _int_parameter(
            config,
            "onnxruntime_intra_op_threads",
            min(_cpu_count(), MAX_DEFAULT_INTRA_OP_THREADS),
        )
        options.inter_op_num_threads = _int_parameter(config, "onnxruntime_inter_op_threads", 1)
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: its warnings are colour-coded noise
        spinning = _int_parameter(config, "onnxruntime_allow_spinning", DEFAULT_ALLOW_SPINNING)
        options.add_session_config_entry("session.intra_op.allow_spinning", str(min(spinning, 1)))
        options.add_session_config_entry("session.inter_op.allow_spinning", str(min(spinning, 1)))
        transfer = config.get("parameters", {}).get("tensor_transfer", {}).get("string_value")
        self.dlpack = transfer == "dlpack"
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        missing = [n for n in self.input_names if n not in graph_inputs] + [
            n for n in self.output_names if n not in graph_outputs
        ]
        if missing:
            raise pb_utils.TritonModelException(
                f"{path}: config names tensors the ONNX graph lacks: {missing}"
            )

    def execute(self, requests: list[Any]) -> list[Any]:
        if self.timings is None:
            return self._execute(requests)
        started = time.perf_counter()
        responses = self._execute(requests)
        elapsed = (time.perf_counter() - started) * 1e3
        with open(self.timings, "a") as log:
            log.write(f"{self.model_name} {self.run_ms:.3f} {elapsed:.3f}\n")
        return responses

    def _execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        batches: list[list[np.ndarray]] = []  # per request, arrays in input order
        members: list[int] = []  # indices of the requests taking part in the run
        for index, request in enumerate(requests):
            arrays = []
            for name, dtype, dims in zip(
                self.input_names, self.input_dtypes, self.input_dims, strict=True
            ):
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                problem = None
                if tensor is None:
                    problem = f"missing input {name!r}"
                else:
                    raw = np.from_dlpack(tensor) if self.dlpack else tensor.as_numpy()
                    array = np.asarray(raw, dtype=dtype)
                    if not _shape_fits(array.shape, dims):
                        problem = f"input {name!r} has shape {array.shape}, expected [B, *{dims}]"
                if problem is not None:
                    # Refuse this request alone: a bad one must not fail its batch-mates.
                    responses[index] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(problem)
                    )
                    break
                arrays.append(array)
            else:
                batches.append(arrays)
                members.append(index)

        if members:
            sizes = [arrays[0].shape[0] for arrays in batches]
            feed = {
                name: (
                    batches[0][position]
                    if len(batches) == 1
                    else np.concatenate([arrays[position] for arrays in batches], axis=0)
                )
                for position, name in enumerate(self.input_names)
            }
            try:
                started = time.perf_counter()
                results = self.session.run(self.output_names, feed)
                self.run_ms = (time.perf_counter() - started) * 1e3
            except Exception as exc:  # nothing left to blame on one request: fail the run
                error = pb_utils.TritonError(f"onnxruntime: {exc}")
                for index in members:
                    responses[index] = pb_utils.InferenceResponse(error=error)
                return responses
            bounds = np.cumsum(sizes)[:-1]
            per_output = [np.split(result, bounds, axis=0) for result in results]
            for slot, index in enumerate(members):
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(parts[slot], dtype=dtype))
                    for name, dtype, parts in zip(
                        self.output_names, self.output_dtypes, per_output, strict=True
                    )
                ]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self) -> None:
        self.session = None
