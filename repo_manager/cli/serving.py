"""``serve`` (the embedded tritonserver, reconciled) and ``traffic`` (Router load)."""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from repo_manager.cli.app import Context, cli, require_repository
from repo_manager.cli.initialize import prepare_repository
from repo_manager.cli.options import parse_interval, serve_metrics_options, stop_on_signals
from repo_manager.cli.reconcile import run_until_stopped
from repo_manager.errors import RepoManagerError, TritonUnavailableError
from repo_manager.names import validate_model_name
from repo_manager.rollout import RolloutManager
from repo_manager.transport import ensure_control_key

if TYPE_CHECKING:
    from repo_manager.server import EmbeddedTriton


@cli.command()
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: all)."
)
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--unlocked",
    is_flag=True,
    help="Serve model control (load, unload) and shared memory to anyone who reaches the "
    "ports. Default: only to callers with the control key (REPO_MANAGER_CONTROL_KEY, or "
    "the file REPO_MANAGER_CONTROL_KEY_FILE names, else one made in "
    "~/.config/repo-manager/control-key); inference stays open.",
)
@click.option(
    "--process-metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve the resident memory of tritonserver and its backend stubs at :PORT/metrics "
    "(repo_manager_server_resident_bytes; bound to --host), for the memory gates of "
    "reconcile --watch and rollout (give it as a --metrics-url).",
)
@click.option(
    "--reconcile-interval",
    default="10s",
    show_default=True,
    help="Re-apply every model's desired state this often, as reconcile --watch does.",
)
@click.pass_obj
def serve(
    obj: Context,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    host: str,
    log_file: Path | None,
    unlocked: bool,
    process_metrics_port: int | None,
    reconcile_interval: str,
) -> None:
    """Run the embedded tritonserver on the repository (foreground) and keep reconciling
    it: a version a manager records while the server runs is loaded within an interval."""
    interval = parse_interval(reconcile_interval, "--reconcile-interval")
    from repo_manager.server import EmbeddedTriton, ServerPorts

    storage = prepare_repository(obj)
    key, kept = (None, "") if unlocked else ensure_control_key()
    server = EmbeddedTriton(
        storage.triton_location,
        ports=ServerPorts(http=http_port, grpc=grpc_port, metrics=metrics_port),
        log_path=log_file,
        host=host,
        control_key=key,
    )
    stop = stop_on_signals()
    server.start()
    try:
        if process_metrics_port is not None:
            _serve_process_metrics(server, process_metrics_port, host)
        server.wait_ready()
        click.echo(
            f"tritonserver ready: grpc {server.grpc_url}, http {server.http_url}, "
            f"metrics {server.metrics_url}",
            err=True,
        )
        click.echo(
            "model control OPEN to anyone who reaches these ports (--unlocked)"
            if key is None
            else f"model control and shared memory need the control key (from {kept})",
            err=True,
        )
        local = Context(
            repository=obj.repository,
            urls=[server.grpc_url],
            s3_endpoint=obj.s3_endpoint,
            signing_key=obj.signing_key,
            verbose=obj.verbose,
        )
        manager = local.manager()
        for report in manager.reconcile():
            if report.refused:
                click.echo(f"error: {report.refused}", err=True)
            else:
                click.echo(f"{report.model}: versions {','.join(report.desired)} loaded", err=True)
        next_pass = time.monotonic() + interval
        while not stop.wait(0.5):
            if not server.is_alive():
                raise click.ClickException("tritonserver exited")
            if time.monotonic() >= next_pass:
                outcome = run_until_stopped(stop, functools.partial(_reconcile_quietly, manager))
                if isinstance(outcome, RepoManagerError):
                    click.echo(f"error: reconcile: {outcome}", err=True)
                next_pass = time.monotonic() + interval
    finally:
        server.stop()


def _serve_process_metrics(server: EmbeddedTriton, port: int, host: str) -> None:
    """The server's resident memory at ``host:port/metrics``, in its own registry."""
    from prometheus_client import CollectorRegistry

    from repo_manager.metrics import start_metrics_server
    from repo_manager.metrics.resident import ResidentMemoryCollector

    registry = CollectorRegistry()
    registry.register(ResidentMemoryCollector(server=server.grpc_url, pid=lambda: server.pid))
    start_metrics_server(port, addr=host, registry=registry)
    click.echo(f"process metrics http://{host}:{port}/metrics", err=True)


def _reconcile_quietly(manager: RolloutManager) -> RolloutManager:
    """One reconcile pass; a line on stderr only for a model it had to change."""
    for report in manager.reconcile():
        done = [a for a in report.actions if not a.startswith("unreachable")]
        if report.refused:
            click.echo(f"error: {report.refused}", err=True)
        elif done:
            click.echo(f"{report.model}: reconciled ({'; '.join(done)})", err=True)
    return manager


@cli.command()
@click.argument("model")
@click.option(
    "--rate",
    type=click.FloatRange(0.1, 10000),
    default=10.0,
    show_default=True,
    help="Requests per second, all threads together.",
)
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--duration", default=None, help="Stop after this long (30s, 5m) [default: never].")
@click.option("--imgsz", type=click.IntRange(32, 4096), default=640, show_default=True)
@click.option(
    "--images",
    type=click.Path(path_type=Path),
    default=None,
    help="Send these recorded frames (a folder of .jpg/.png) instead of random --imgsz "
    "images, so the live detection gates compare what each version sees.",
)
@serve_metrics_options("Serve the Router's per-version metrics at :PORT/metrics.")
@click.pass_obj
def traffic(
    obj: Context,
    model: str,
    rate: float,
    threads: int,
    duration: str | None,
    imgsz: int,
    images: Path | None,
    metrics_port: int | None,
    metrics_addr: str,
) -> None:
    """Send Router.detect requests on random images or recorded frames: load for a
    rollout (or the long-running manager) to judge."""
    from repo_manager.loadgen import load_images, run_load
    from repo_manager.metrics import start_metrics_server
    from repo_manager.routing import Router

    model = validate_model_name(model)
    seconds = parse_interval(duration, "--duration") if duration else None
    frames = None if images is None else load_images(images)
    require_repository(obj)
    if metrics_port is not None:
        start_metrics_server(metrics_port, addr=metrics_addr)
    stop = stop_on_signals()
    if seconds is not None:
        timer = threading.Timer(seconds, stop.set)
        timer.daemon = True
        timer.start()
    started = time.monotonic()
    with Router(
        model,
        url=obj.urls,
        repository=obj.repository,
        security=obj.security,
        s3_endpoint=obj.s3_endpoint,
    ) as router:
        report = run_load(router, rate=rate, threads=threads, imgsz=imgsz, stop=stop, images=frames)
    served = sum(report.served.values())
    shares = ", ".join(
        f"v{v}: {n} ({100 * n / served:.1f}%)" for v, n in sorted(report.served.items())
    )
    click.echo(
        f"{model}: {report.total} requests in {time.monotonic() - started:.1f}s; "
        f"{shares or 'none served'}; {report.failures} failed"
    )
    if report.failures and not served:
        raise TritonUnavailableError(f"no request served: {report.last_error}")
