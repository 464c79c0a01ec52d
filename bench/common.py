"""What every bench script shares: the machine line, interleaved timing, percentiles, and a
throw-away embedded Triton with detectors published into it through ``RolloutManager``.

Ratios on a shared machine are only honest when both sides see the same load, so every
comparison here alternates its sides round by round (``interleaved``) or window by window.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DETECTOR = ROOT / ".cache" / "detector" / "detector.pt"


def machine() -> str:
    """CPU model, cores, Python and the load average now (printed by every script)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"machine: {model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; load average {load}"
    )


def load_now() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def detector_weights(given: Path | None) -> Path:
    """The trained tiny detector (``make detector``), or the path the user gave."""
    path = given or Path(os.environ.get("REPO_MANAGER_DETECTOR", DEFAULT_DETECTOR))
    if not path.is_file():
        sys.exit(f"no detector at {path}: run `make detector` or pass --weights")
    return path


def interleaved(
    fns: Sequence[Callable[[], object]], rounds: int, *, gap: float = 0.0
) -> list[list[int]]:
    """Per-call latencies (ns) of each fn, one call of each per round, order rotating.

    ``gap`` seconds of idle (untimed) after each call keep one side's leftovers (e.g.
    onnxruntime threads still spinning after a run) from slowing the next side down.
    """
    times: list[list[int]] = [[] for _ in fns]
    clock = time.perf_counter_ns
    n = len(fns)
    for i in range(rounds):
        for j in range(n):
            k = (i + j) % n if i % 2 == 0 else (i - j) % n
            start = clock()
            fns[k]()
            times[k].append(clock() - start)
            if gap:
                time.sleep(gap)
    return times


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def met(value: float, goal: float, *, at_most: bool = True) -> str:
    ok = value <= goal if at_most else value >= goal
    return "met" if ok else "NOT met"


@dataclass(kw_only=True)
class BenchStack:
    """A repository, an embedded tritonserver on free ports and a manager over both."""

    root: Path
    repository: Path
    url: str
    server: object
    manager: object  # RolloutManager (typed loosely: imported lazily)

    def publish(
        self,
        model: str,
        version: str,
        weights: Path,
        *,
        imgsz: int,
        max_batch: int = 8,
        canary_weight: int = 0,
        contract: str = "raw",
    ) -> None:
        """``contract`` raw by default: the figures of BENCHMARKS.md before contracts
        existed were measured on raw graphs (``bench/contracts.py`` compares the two)."""
        from export import ExportOptions

        options = ExportOptions(
            format="python", imgsz=imgsz, max_batch=max_batch, contract=contract
        )
        publish_weights(self.manager, model, version, weights, options, canary_weight=canary_weight)


def publish_weights(
    manager: Any, model: str, version: str, weights: Path, options: Any, **publish: Any
) -> None:
    """Export ``weights`` into a staging folder and publish it (what the CLI's publish does:
    the manager itself never exports)."""
    from export import export_model

    with tempfile.TemporaryDirectory(prefix="bench-stage-") as tmp:
        staged = Path(tmp) / model
        export_model(weights, staged, model_name=model, version=version, options=options)
        manager.publish(model, version, staged=staged, **publish)


@contextmanager
def bench_stack(root: Path, *, drain_seconds: float = 0.3) -> Iterator[BenchStack]:
    """Start an embedded Triton over ``root/model_repository``; stop it afterwards."""
    from repo_manager.repository import ModelRepository
    from repo_manager.rollout import RolloutManager, RolloutSettings
    from repo_manager.server import EmbeddedTriton, ServerPorts
    from repo_manager.storage import LocalStorage
    from repo_manager.triton import TritonFleet

    repository = root / "model_repository"
    repository.mkdir(parents=True, exist_ok=True)
    server = EmbeddedTriton(repository, ports=ServerPorts.free(), log_path=root / "triton.log")
    server.__enter__()
    fleet = TritonFleet([server.grpc_url])
    try:
        manager = RolloutManager(
            ModelRepository(LocalStorage(repository)),
            fleet,
            settings=RolloutSettings(drain_seconds=drain_seconds),
        )
        yield BenchStack(
            root=root, repository=repository, url=server.grpc_url, server=server, manager=manager
        )
    finally:
        fleet.close()
        server.__exit__(None, None, None)


def reconfigure(stack: BenchStack, model: str, change: Callable[[Any], None]) -> None:
    """Edit a published model's on-disk config (``change`` mutates it) and reload it."""
    from repo_manager.state import load_state

    manager = stack.manager
    repo = manager.repository  # type: ignore[attr-defined]
    config = repo.require_config(model)
    change(config)
    repo.write_config(model, config)
    state = load_state(repo.storage, model)
    assert state is not None
    manager.applier.apply(state)  # type: ignore[attr-defined]


def table_only_manager(storage: Any, model: str, versions: Sequence[str] = ("1", "2")) -> Any:
    """A RolloutManager whose moves write the routing table and reach no server: for the
    benches that time only the table's propagation (``set_weight`` checks that the fleet
    answers before it writes, so the fleet here says it does). ``model``'s ``versions``
    are written as small placeholders with their manifests and a sealed config, since every
    move first checks that what it serves is what was published."""
    import hashlib
    import json

    from repo_manager.modelconfig import ModelConfig
    from repo_manager.names import MANIFEST_FILE, versions_model_name
    from repo_manager.repository import ModelRepository
    from repo_manager.rollout import RolloutManager
    from repo_manager.triton import TritonFleet

    class NoServers(TritonFleet):
        def check_reachable(self) -> None:
            return None

    repository = ModelRepository(storage)
    for version in versions:
        folder, code = f"{versions_model_name(model)}/{version}", b"# a placeholder\n"
        storage.write_bytes_atomic(f"{folder}/model.py", code)
        files = {"model.py": hashlib.sha256(code).hexdigest()}
        manifest = {"model": model, "version": version, "files": files}
        storage.write_bytes_atomic(f"{folder}/{MANIFEST_FILE}", json.dumps(manifest).encode())
    repository.write_config(model, ModelConfig(name=versions_model_name(model)))
    return RolloutManager(repository, NoServers(["127.0.0.1:1"]))
