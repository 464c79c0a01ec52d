"""Clients of the public name for tests: what a client that is not our Router sends and
gets, and each version's own ``model.onnx`` run in-process to tell which version answered.

Stable is the trained tiny detector, the canary an untrained YOLOv8n: their outputs differ
visibly, so an answer equal to one version's own ``model.onnx`` proves which computed it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient

from repo_manager.names import versions_model_name
from tests.integration.conftest import IMGSZ, Stack
from tests.integration.traffic import PAUSE

MODEL = "yolov8n"
VERSIONS = versions_model_name(MODEL)
SIZE = int(IMGSZ)
#: Tests that tell versions apart by their raw answers on random inputs publish a raw model:
#: end-to-end, the trained and the untrained detector both find nothing in noise (all-zero
#: answers that no test could tell apart).
RAW = ("--contract", "raw")


def inputs(count: int, seed: int = 0) -> list[np.ndarray]:
    """Letterboxed-size float images, as a client would send them."""
    rng = np.random.default_rng(seed)
    return [rng.random((1, 3, SIZE, SIZE), dtype=np.float32) for _ in range(count)]


def request(images: np.ndarray) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    return [tensor]


def unpinned(client: grpcclient.InferenceServerClient, images: np.ndarray) -> np.ndarray:
    """What a client that is not our Router gets: the public name, no version."""
    output = client.infer(MODEL, request(images)).as_numpy("output0")
    assert output is not None
    return output


class Reference:
    """One version's own ``model.onnx`` run in-process by onnxruntime."""

    def __init__(self, repository: Path, version: str, *, model: str = MODEL) -> None:
        onnx = repository / versions_model_name(model) / version / "model.onnx"
        self.session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        # Traffic cycles through a few images: each is run once, not once per answer
        # checked (thousands of runs that took the CPU from the tests beside this one).
        self.known: dict[bytes, np.ndarray] = {}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        key = (
            hashlib.blake2b(np.ascontiguousarray(images).tobytes()).digest()
            + str(images.shape).encode()
        )
        if key not in self.known:
            self.known[key] = np.asarray(self.session.run(["output0"], {"images": images})[0])
        return self.known[key]


def matches(served: np.ndarray, reference: np.ndarray) -> bool:
    return served.shape == reference.shape and bool(
        np.allclose(served, reference, rtol=1e-4, atol=1e-3)
    )


def published(stack: Stack, trained: Path, untrained: Path) -> tuple[Reference, Reference]:
    stack.publish(MODEL, "1", trained, *RAW)
    stack.publish(MODEL, "2", untrained)
    return Reference(stack.repository, "1"), Reference(stack.repository, "2")


class UnpinnedTraffic:
    """Client threads calling the public name with no version until stopped (thread i on
    the i-th of ``url``'s servers, in turn); clearing ``running`` holds them while a
    server is down (a restart drops every connection)."""

    def __init__(self, url: str | list[str], threads: int) -> None:
        self.urls = [url] if isinstance(url, str) else url
        self.images = inputs(4, seed=1)
        self.sent = 0
        self.failures: list[str] = []
        self.answers: list[tuple[float, int, np.ndarray]] = []
        self.running = threading.Event()
        self.running.set()
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.workers = [
            threading.Thread(target=self.loop, args=(self.urls[i % len(self.urls)],), daemon=True)
            for i in range(threads)
        ]

    def loop(self, url: str) -> None:
        with grpcclient.InferenceServerClient(url) as client:
            i = 0
            while not self.stopped.is_set():
                if not self.running.wait(timeout=0.1):
                    continue
                x = i % len(self.images)
                try:
                    output = unpinned(client, self.images[x])
                    with self.lock:
                        self.sent += 1
                        self.answers.append((time.monotonic(), x, output))
                except Exception as exc:  # every failure is the finding
                    with self.lock:
                        self.sent += 1
                        self.failures.append(str(exc).splitlines()[0])
                i += 1
                self.stopped.wait(PAUSE)

    def __enter__(self) -> UnpinnedTraffic:
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        for worker in self.workers:
            worker.join(timeout=30)
