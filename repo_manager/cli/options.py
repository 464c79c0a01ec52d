"""Options several commands share (one definition each), and the helpers that go with
them: the interval parser, the signal helper of the long-running commands, and serving the
manager's metrics."""

from __future__ import annotations

import functools
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from prometheus_client import CollectorRegistry

from repo_manager.errors import InvalidGateError
from repo_manager.metrics import ManagerMetrics, start_metrics_server
from repo_manager.storage import Storage

if TYPE_CHECKING:
    from repo_manager.watch import WatchServer

if TYPE_CHECKING:
    from repo_manager.analysis import MetricsProvider

__all__ = [
    "analysis_options",
    "drain_option",
    "export_options",
    "json_option",
    "metrics_source",
    "metrics_source_options",
    "parse_interval",
    "reason_option",
    "serve_manager_metrics",
    "serve_manager_watch",
    "serve_metrics_options",
    "servers_options",
    "stop_on_signals",
    "verdict_options",
]


def drain_option(func: Any) -> Any:
    """``--drain-seconds``: time for live Routers to follow the table before an unload."""
    return click.option(
        "--drain-seconds",
        type=click.FloatRange(0, 600),
        default=None,
        help="Wait between moving traffic and unloading [default: 1.5].",
    )(func)


def servers_options(func: Any) -> Any:
    """``--servers`` / ``--exclude``: the only servers of the fleet that load the canary
    (``repo_manager.server_selection`` names them)."""
    func = click.option(
        "--exclude",
        default=None,
        help="Keep the canary off these servers: NAME[,NAME...] (as --servers).",
    )(func)
    return click.option(
        "--servers",
        default=None,
        help="Load the canary only on these servers of the fleet, and send it traffic only "
        "there: NAME[,NAME...], each HOST:PORT, HOST (every server on it), a dns:// --url "
        "(every address it resolves to), or all.",
    )(func)


def reason_option(func: Any) -> Any:
    """``--reason``: why a person made a move, recorded in the history with who made it."""
    return click.option(
        "--reason", default="", help="Why (recorded in the history, see `history`)."
    )(func)


def json_option(func: Any) -> Any:
    """``--json`` on every read command."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def stop_on_signals() -> threading.Event:
    """An event that SIGINT and SIGTERM set: a long-running command waits on it between
    its steps and stops cleanly (a container's stop, a Ctrl-C)."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def serve_manager_metrics(port: int | None, addr: str) -> ManagerMetrics | None:
    """The manager's metrics on a registry of their own, served at ``addr:port`` (None:
    no port asked for, so nothing is kept or served)."""
    if port is None:
        return None
    registry = CollectorRegistry()
    metrics = ManagerMetrics(registry)
    start_metrics_server(port, addr=addr, registry=registry)
    return metrics


def serve_manager_watch(
    port: int, addr: str, storage: Storage, *, max_connections: int | None = None
) -> tuple[ManagerMetrics, WatchServer]:
    """The long-running manager's port: its metrics at /metrics and the routing tables of
    ``storage`` at /watch/MODEL, where Routers subscribe (``REPO_MANAGER_WATCH_URL``).
    The process's descriptor limit is raised to its hard limit first, and the server holds
    at most ``max_connections`` (default ``WatchLimits``'), fewer if descriptors are short."""
    from repo_manager.watch import WatchLimits, WatchServer, raise_descriptor_limit

    raise_descriptor_limit()
    limits = WatchLimits()
    if max_connections is not None:
        limits = WatchLimits(
            max_connections=max_connections,
            max_pending=min(limits.max_pending, max_connections),
            max_subscribers=max_connections,
        )
    registry = CollectorRegistry()
    metrics = ManagerMetrics(registry)
    server = WatchServer(storage, registry, limits=limits).start(port, addr)
    return metrics, server


_EXPORT_PARAMETERS = (
    "fmt",
    "contract",
    "imgsz",
    "max_batch",
    "instances",
    "fp16",
    "int8",
    "calibration_images",
    "cache_dir",
    "workspace_gib",
    "ort_tensorrt",
)


def parse_interval(text: str, option: str = "--interval") -> float:
    """``30s``, ``2m``, ``500ms`` or plain seconds -> seconds (0.1 .. 86400)."""
    raw = text.strip().lower()
    scale = 1.0
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if raw.endswith(suffix):
            raw, scale = raw[: -len(suffix)], factor
            break
    try:
        seconds = float(raw) * scale
    except ValueError:
        raise InvalidGateError(f"invalid {option} {text!r}: e.g. 30s, 2m, 500ms") from None
    if not 0.1 <= seconds <= 86400:
        raise InvalidGateError(f"invalid {option} {text!r}: must be 100ms .. 24h")
    return seconds


def analysis_options(func: Any) -> Any:
    """Options of the progressive analysis (``rollout`` and ``publish --auto``), with
    ``--metrics-port``/``--metrics-addr`` of ``serve_metrics_options``."""
    for option in reversed(
        [
            click.option(
                "--steps",
                default="10,25,50,100",
                show_default=True,
                help="Canary weights, one per passed interval; the last promotes. 'pause' "
                "before a weight waits for `approve` (e.g. 10,25,pause,50,100). Waves: "
                "'servers=NAMES:WEIGHTS; servers=all:WEIGHTS' puts the canary on those "
                "servers at those steps (e.g. 'servers=triton-1:10,25; servers=all:25,50,100').",
            ),
            click.option(
                "--approve-before",
                default="",
                help="Weights of --steps reached only once a person approves (e.g. 50).",
            ),
            click.option(
                "--interval",
                default="30s",
                show_default=True,
                help="Time between analysis steps (30s, 2m, 500ms).",
            ),
        ]
    ):
        func = option(func)
    func = verdict_options(func)
    func = metrics_source_options(func)
    # The same pair as every long-running command: a container's manager binds 0.0.0.0.
    return serve_metrics_options("Expose weight, phase, failed checks and gates on this port.")(
        func
    )


def verdict_options(func: Any) -> Any:
    """How a canary is judged live (``rollout``, ``publish --auto``, and the long-running
    manager's guard of every canary): the failed-check threshold, the metrics-error
    limit, the live gates' bounds."""
    for option in reversed(
        [
            click.option(
                "--threshold",
                type=int,
                default=2,
                show_default=True,
                help="Failed checks at which the canary is rolled back.",
            ),
            click.option(
                "--max-metrics-errors",
                type=int,
                default=5,
                show_default=True,
                help="Unreadable metrics steps in a row before stopping "
                "(the canary keeps its weight; never a rollback).",
            ),
            click.option(
                "--live-gate",
                "live_gates",
                multiple=True,
                help="Live gate bound NAME=VALUE (repeatable), e.g. max_latency_ratio=1.3.",
            ),
        ]
    ):
        func = option(func)
    return func


def metrics_source_options(func: Any) -> Any:
    """``--metrics-url`` (repeatable) and ``--prometheus``: where live per-version figures
    are read (``rollout``, ``status --watch``); see ``metrics_source``."""
    func = click.option(
        "--prometheus",
        default=None,
        help="Prometheus server URL: read figures with PromQL instead.",
    )(func)
    return click.option(
        "--metrics-url",
        "metrics_urls",
        multiple=True,
        envvar="TRITON_METRICS_URL",
        help="Prometheus text endpoint to scrape (repeatable; env TRITON_METRICS_URL, "
        "space-separated): Triton's metrics port, Routers' metrics ports.  "
        "[default: localhost:8002]",
    )(func)


def metrics_source(prometheus: str | None, metrics_urls: tuple[str, ...]) -> MetricsProvider:
    """The provider the metrics source options name (bad input: exit 2)."""
    from repo_manager.analysis import PromQLProvider, ScrapeProvider

    if prometheus and metrics_urls:
        raise InvalidGateError("give --prometheus or --metrics-url, not both")
    if prometheus:
        return PromQLProvider(prometheus)
    return ScrapeProvider(list(metrics_urls) or ["localhost:8002"])


def serve_metrics_options(port_help: str) -> Any:
    """``--metrics-port`` and ``--metrics-addr`` of the long-running commands."""

    def decorate(func: Any) -> Any:
        func = click.option(
            "--metrics-addr",
            default="127.0.0.1",
            show_default=True,
            help="Address for --metrics-port (0.0.0.0: all, e.g. in a container).",
        )(func)
        return click.option(
            "--metrics-port", type=click.IntRange(1, 65535), default=None, help=port_help
        )(func)

    return decorate


def export_options(func: Any) -> Any:
    """Options shared by ``export`` and ``publish``, handed over as one ``export_options``."""

    @functools.wraps(func)
    def with_export_options(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in _EXPORT_PARAMETERS}
        values["format"] = values.pop("fmt")
        # Not resolved here: format, contract, imgsz, max batch and instances not given
        # (None) are inherited from the model's config (export.settings.choose_export_options).
        kwargs["export_options"] = values
        return func(*args, **kwargs)

    wrapped: Any = with_export_options
    for option in reversed(
        [
            click.option(
                "--format",
                "fmt",
                type=click.Choice(["python", "onnx", "plan"]),
                default=None,
                help="python: onnxruntime in Triton's python backend (CPU); "
                "onnx: onnxruntime backend; plan: TensorRT (GPU).  "
                "[default: the model's, else python]",
            ),
            click.option(
                "--contract",
                type=click.Choice(["end2end", "raw"]),
                default=None,
                help="What the model answers: end2end [B, K, 6] detections (NMS inside the "
                "graph or an NMS-free head, any generation or class count) or raw "
                "[B, 4+nc, N] (NMS on the client).  [default: the model's, else end2end]",
            ),
            click.option(
                "--imgsz",
                type=click.IntRange(32, 4096),
                default=None,
                help="Square input size [default: the model's, else the size the "
                "checkpoint was trained at, else 640].",
            ),
            click.option(
                "--max-batch",
                type=click.IntRange(1, 1024),
                default=None,
                help="Largest batch [default: the model's, else 8].",
            ),
            click.option(
                "--instances",
                type=click.IntRange(1, 64),
                default=None,
                help="Model instances per server [default: the model's, else 1].",
            ),
            click.option("--fp16", is_flag=True, help="FP16 engine (plan only)."),
            click.option("--int8", is_flag=True, help="INT8 engine (plan only)."),
            click.option(
                "--calibration-images",
                type=click.Path(exists=True, file_okay=False, path_type=Path),
                default=None,
                help="Images for INT8 calibration (plan only).",
            ),
            click.option(
                "--cache-dir",
                type=click.Path(file_okay=False, path_type=Path),
                default=None,
                help="TensorRT caches [default: ~/.cache/repo-manager/tensorrt].",
            ),
            click.option(
                "--workspace-gib",
                type=click.FloatRange(0.25, 1024),
                default=4.0,
                show_default=True,
                help="TensorRT builder workspace limit (plan only).",
            ),
            click.option(
                "--ort-tensorrt",
                is_flag=True,
                help="onnx format: run through onnxruntime's TensorRT accelerator on GPU.",
            ),
        ]
    ):
        wrapped = option(wrapped)
    return wrapped
