"""The soak's clients, running throughout: Router threads on the versions model (real
images through ``Router.detect``) and unpinned threads calling the public name directly
with tritonclient, as any client that is not our Router does.

A Router request must never fail (it retries another server). An unpinned client calls
one server, so a request to a server the fault killed is excused: ``Downtime`` marks a
server down before the kill and up once reconcile has loaded it again, and a request is
excused when its server was down at any moment between its start and its end.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["Downtime", "RouterTraffic", "UnpinnedTraffic", "shapes_images"]

PAUSE = 0.02  # seconds between two requests of one thread: load, not a CPU hog


def shapes_images(count: int, imgsz: int, seed: int) -> list[np.ndarray]:
    """Real test images (the tiny detector's generated shapes), BGR uint8."""
    from export.shapes import generate_shapes_image

    rng = np.random.default_rng(seed)
    return [generate_shapes_image(imgsz=imgsz, rng=rng).image for _ in range(count)]


class Downtime:
    """Which servers a fault took down, as epochs a request can compare."""

    def __init__(self, servers: int) -> None:
        self.lock = threading.Lock()
        self.epochs = [0] * servers
        self.down = [False] * servers

    def mark_down(self, index: int) -> None:
        with self.lock:
            self.down[index] = True
            self.epochs[index] += 1

    def mark_up(self, index: int) -> None:
        with self.lock:
            self.down[index] = False

    def ticket(self, index: int) -> tuple[int, bool]:
        with self.lock:
            return self.epochs[index], self.down[index]

    def excused(self, index: int, ticket: tuple[int, bool]) -> bool:
        with self.lock:
            return ticket[1] or self.down[index] or self.epochs[index] != ticket[0]


class _Threads:
    """Worker threads calling ``once(thread, i)`` until stopped; counts and failures."""

    def __init__(self, count: int, name: str, pause: float = PAUSE) -> None:
        self.pause = pause
        self.lock = threading.Lock()
        self.sent = 0
        self.failures: list[str] = []
        self.excused = 0
        self.by_version: Counter[str] = Counter()
        self.stopped = threading.Event()
        self.workers = [
            threading.Thread(target=self._loop, args=(t,), name=f"{name}-{t}", daemon=True)
            for t in range(count)
        ]

    def _loop(self, thread: int) -> None:
        i = 0
        while not self.stopped.is_set():
            self.once(thread, i)
            i += 1
            time.sleep(self.pause)

    def once(self, thread: int, i: int) -> None:
        raise NotImplementedError

    def count(self, *, version: str | None = None, failure: str | None = None) -> None:
        with self.lock:
            self.sent += 1
            if version is not None:
                self.by_version[version] += 1
            if failure is not None:
                self.failures.append(failure)

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def stop(self) -> None:
        self.stopped.set()
        for worker in self.workers:
            worker.join(timeout=60)

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.sent, len(self.failures)


class RouterTraffic(_Threads):
    """``threads`` threads sharing one Router over the whole fleet."""

    def __init__(
        self, router: object, images: Sequence[np.ndarray], threads: int, pause: float = PAUSE
    ) -> None:
        super().__init__(threads, "router", pause)
        self.router = router
        self.images = list(images)

    def once(self, thread: int, i: int) -> None:
        image = self.images[(thread + i) % len(self.images)]
        try:
            found = self.router.detect(image)  # type: ignore[attr-defined]
            self.count(version=str(found.version))
        except Exception as exc:  # every failure is a finding
            self.count(failure=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")


class UnpinnedTraffic(_Threads):
    """``threads`` threads, each alternating over every server, calling the public name."""

    def __init__(
        self,
        urls: Callable[[], list[str]],
        model: str,
        images: Sequence[np.ndarray],
        downtime: Downtime,
        threads: int,
        pause: float = PAUSE,
    ) -> None:
        super().__init__(threads, "unpinned", pause)
        self.urls = urls
        self.model = model
        self.downtime = downtime
        self.tensors = [_tensor(image) for image in images]
        self.clients: dict[tuple[int, str], object] = {}

    def _client(self, thread: int, url: str) -> object:
        import tritonclient.grpc as grpcclient

        key = (thread, url)
        if key not in self.clients:
            self.clients[key] = grpcclient.InferenceServerClient(url)
        return self.clients[key]

    def once(self, thread: int, i: int) -> None:
        import tritonclient.grpc as grpcclient

        urls = self.urls()
        index = (thread + i) % len(urls)
        ticket = self.downtime.ticket(index)
        tensor = self.tensors[i % len(self.tensors)]
        request = grpcclient.InferInput("images", list(tensor.shape), "FP32")
        request.set_data_from_numpy(tensor)
        try:
            client = self._client(thread, urls[index])
            answer = client.infer(self.model, [request], client_timeout=30)  # type: ignore[attr-defined]
            if answer.as_numpy("output0") is None:
                raise RuntimeError("no output0 in the answer")
            self.count()
        except Exception as exc:  # judged below: a killed server's requests are excused
            if self.downtime.excused(index, ticket):
                with self.lock:
                    self.sent += 1
                    self.excused += 1
                return
            self.count(failure=f"{urls[index]}: {str(exc).splitlines()[0][:200]}")

    def stop(self) -> None:
        super().stop()
        for client in self.clients.values():
            client.close()  # type: ignore[attr-defined]


def _tensor(image: np.ndarray) -> np.ndarray:
    """A square BGR image as the model's input: RGB, CHW, [0, 1], batch of one."""
    rgb = image[:, :, ::-1].transpose(2, 0, 1)
    return np.ascontiguousarray(rgb[None], dtype=np.float32) / 255.0
