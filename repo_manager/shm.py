"""Triton system shared memory for a Router whose server runs on this machine.

Over plain gRPC a 640x640 float image (4.9 MB) is copied into a protobuf, through the
socket and out again; with a shared-memory region the client writes the tensor once and
Triton reads it in place (measured: 1.5x -> 1.15x of in-process onnxruntime at 320 px).

Each thread gets its own region (inputs, then outputs), registered with the server once
and re-made when a request needs more room, so concurrent requests never share bytes.
Regions are unregistered and unlinked on ``close``. Anything that goes wrong on the
shared-memory side (server in another IPC namespace, a restarted server that forgot the
registrations) falls back to plain gRPC: a slower request, never a failed one.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

__all__ = ["SharedMemoryChannel", "is_local_url", "leaked_regions"]

logger = logging.getLogger(__name__)

_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0"})
_ALIGN = 64
_PREFIX = "repo-manager-shm"


def is_local_url(url: str) -> bool:
    """True for a gRPC address on this machine (loopback or a unix socket)."""
    if url.startswith("unix:"):
        return True
    host = url.rsplit(":", 1)[0] if url.count(":") == 1 or url.startswith("[") else url
    return host.lower() in _LOCAL_HOSTS


def leaked_regions() -> list[str]:
    """Our regions still present in /dev/shm (for tests: none after ``close``)."""
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(_PREFIX))
    except OSError:
        return []


def _aligned(size: int) -> int:
    return (size + _ALIGN - 1) // _ALIGN * _ALIGN


@dataclass(kw_only=True, frozen=True)
class _OutputSpec:
    name: str
    datatype: str  # "FP32", ...
    dims: tuple[int, ...]  # without the batch dimension when batched
    itemsize: int


class _Region:
    """One registered region: ``size`` bytes under ``name`` on the server."""

    __slots__ = ("handle", "name", "size", "view")

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.handle = shm.create_shared_memory_region(name, "/" + name, size, create_only=True)
        self.view = self.handle._mpsm_handle.buf  # memoryview over the mapping


class _ThreadState(threading.local):
    region: _Region | None = None
    generation: int = -1


class SharedMemoryChannel:
    """Sends requests for one model to one local server through per-thread regions."""

    def __init__(self, client: Any, model: str) -> None:
        self._client = client
        self._model = model
        self._local = _ThreadState()
        self._regions: list[_Region] = []
        self._lock = threading.Lock()
        self._generation = 0  # bumped when the server may have lost our registrations
        self._outputs: dict[str, _OutputSpec] | None = None
        self._batched = True
        self._counter = itertools.count()
        self._tag = f"{_PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.disabled = False

    # ---- setup ---------------------------------------------------------------------------

    def _output_specs(self) -> dict[str, _OutputSpec]:
        specs = self._outputs
        if specs is None:
            config = self._client.get_model_config(self._model).config
            self._batched = config.max_batch_size > 0
            specs = {}
            for out in config.output:
                datatype = model_config_pb2.DataType.Name(out.data_type).removeprefix("TYPE_")
                specs[out.name] = _OutputSpec(
                    name=out.name,
                    datatype=datatype,
                    dims=tuple(int(d) for d in out.dims),
                    itemsize=np.dtype(triton_to_np_dtype(datatype)).itemsize,
                )
            self._outputs = specs
        return specs

    def _region(self, size: int) -> _Region:
        """This thread's region, (re)made and registered when too small or forgotten."""
        local = self._local
        region = local.region
        if region is not None and region.size >= size and local.generation == self._generation:
            return region
        if region is not None:
            self._drop(region)
            local.region = None
        name = f"{self._tag}-{next(self._counter)}"
        region = _Region(name, max(size, region.size if region is not None else 0))
        with self._lock:
            self._regions.append(region)
        try:
            self._client.register_system_shared_memory(name, "/" + name, region.size)
        except BaseException:
            # The server cannot map our regions (e.g. another IPC namespace): stop trying.
            self.disabled = True
            self._drop(region)
            raise
        local.region = region
        local.generation = self._generation
        return region

    def _drop(self, region: _Region) -> None:
        with self._lock:
            if region in self._regions:
                self._regions.remove(region)
        try:
            self._client.unregister_system_shared_memory(region.name)
        except Exception as exc:  # the server may be gone: still unlink our side
            logger.debug("unregistering %s: %s", region.name, exc)
        region.view = None
        shm.destroy_shared_memory_region(region.handle)

    # ---- requests ------------------------------------------------------------------------

    def infer(
        self,
        version: str,
        inputs: Sequence[grpcclient.InferInput],
        outputs: Sequence[grpcclient.InferRequestedOutput] | None,
        timeout: float | None,
    ) -> Any:
        """One request through this thread's region.

        Raises InferenceServerException for Triton's own answers (the Router's fallback
        logic applies as for plain gRPC) and ``SharedMemoryUnusable`` when the shared-memory
        side failed (the caller sends the request over plain gRPC instead).
        """
        try:
            specs = self._output_specs()
            contents = [inp._get_content() for inp in inputs]
            if any(c is None for c in contents):
                raise SharedMemoryUnusable("an input has no raw content")
            batch = int(inputs[0].shape()[0]) if self._batched and inputs else 1
            wanted = [o.name() for o in outputs] if outputs else list(specs)
            out_sizes = []
            for name in wanted:
                spec = specs.get(name)
                if spec is None or any(d < 0 for d in spec.dims):
                    raise SharedMemoryUnusable(f"output {name!r} has no fixed size")
                count = math.prod(spec.dims) * (batch if self._batched else 1)
                out_sizes.append(count * spec.itemsize)
            layout = [_aligned(len(c)) for c in contents] + [_aligned(s) for s in out_sizes]
            region = self._region(sum(layout))
        except (InferenceServerException, shm.SharedMemoryException, OSError) as exc:
            raise SharedMemoryUnusable(str(exc)) from exc

        view = region.view
        offset = 0
        shm_inputs = []
        for inp, content, size in zip(inputs, contents, layout, strict=False):
            view[offset : offset + len(content)] = content
            tensor = grpcclient.InferInput(inp.name(), list(inp.shape()), inp.datatype())
            tensor.set_shared_memory(region.name, len(content), offset)
            shm_inputs.append(tensor)
            offset += size
        shm_outputs = []
        placed = []
        for name, size, slot in zip(wanted, out_sizes, layout[len(contents) :], strict=True):
            requested = grpcclient.InferRequestedOutput(name)
            requested.set_shared_memory(region.name, size, offset)
            shm_outputs.append(requested)
            placed.append((name, offset))
            offset += slot
        try:
            result = self._client.infer(
                self._model,
                shm_inputs,
                model_version=version,
                outputs=shm_outputs,
                client_timeout=timeout,
            )
        except InferenceServerException as exc:
            if "shared memory" in (exc.message() or "").lower():
                self._generation += 1  # e.g. a restarted server: register again next time
                raise SharedMemoryUnusable(str(exc)) from exc
            raise
        arrays = {}
        for name, at in placed:
            meta = result.get_output(name)
            dtype = triton_to_np_dtype(meta.datatype)
            shape = [int(d) for d in meta.shape]
            # Copied out: the region is reused by this thread's next request.
            arrays[name] = np.array(shm.get_contents_as_numpy(region.handle, dtype, shape, at))
        return SharedMemoryResult(result, arrays)

    def close(self) -> None:
        """Unregister and unlink every region (all threads'); idempotent."""
        with self._lock:
            regions, self._regions = self._regions, []
        for region in regions:
            self._drop(region)


class SharedMemoryUnusable(Exception):
    """The shared-memory path failed; the request should go over plain gRPC."""


class SharedMemoryResult:
    """An ``InferResult`` whose outputs came back through shared memory."""

    __slots__ = ("_arrays", "_result")

    def __init__(self, result: Any, arrays: dict[str, np.ndarray]) -> None:
        self._result = result
        self._arrays = arrays

    def as_numpy(self, name: str) -> np.ndarray | None:
        array = self._arrays.get(name)
        return array if array is not None else self._result.as_numpy(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._result, name)
