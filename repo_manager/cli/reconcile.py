"""``reconcile`` (re-apply the desired state once) and ``reconcile --watch`` (the
long-running manager, with its metrics)."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

import click

from repo_manager.cli.app import Context, cli, emit, require_repository
from repo_manager.cli.options import (
    json_option,
    serve_manager_watch,
    serve_metrics_options,
    stop_on_signals,
)
from repo_manager.cli.render import reconcile_text
from repo_manager.discovery import has_dns, resolve_urls
from repo_manager.errors import (
    IntegrityError,
    InvalidInputError,
    RepoManagerError,
    TritonUnavailableError,
)
from repo_manager.metrics import ManagerMetrics
from repo_manager.rollout import RolloutManager
from repo_manager.state import RolloutState
from repo_manager.watch import WatchServer


@cli.command()
@click.argument("model", required=False)
@click.option("--watch", is_flag=True, help="Keep reconciling every --interval seconds.")
@click.option("--interval", type=click.FloatRange(0.5, 3600), default=10.0, show_default=True)
@serve_metrics_options(
    "With --watch: serve every model's rollout state and reconcile counters at "
    ":PORT/metrics, and the routing tables Routers subscribe to at :PORT/watch/MODEL "
    "(their REPO_MANAGER_WATCH_URL=http://HOST:PORT)."
)
@click.option(
    "--max-connections",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="With --metrics-port: connections the port holds at most (Routers, scrapes); "
    "more are answered 503.  [default: 4096, fewer if file descriptors are short]",
)
@json_option
@click.pass_obj
def reconcile(
    obj: Context,
    model: str | None,
    watch: bool,
    interval: float,
    metrics_port: int | None,
    metrics_addr: str,
    max_connections: int | None,
    as_json: bool,
) -> None:
    """Re-apply the desired state (after Triton or the manager restarted).

    With --watch this is the long-running manager: each pass resolves dns:// fleets again
    (a new replica gets the models), and a pass that fails prints one line and is
    counted, then the next pass tries again. With --metrics-port it also pushes every
    routing table written to the repository (by any manager process) to the Routers
    subscribed at /watch/MODEL.
    """
    if metrics_port is not None and not watch:
        raise InvalidInputError("--metrics-port needs --watch")
    require_repository(obj)
    if not watch:
        _reconcile_pass(obj, None, model, metrics=None, as_json=as_json, watch=False)
        return
    if metrics_port is None:
        _watch(obj, model, interval, None, None, as_json=as_json)
        return
    metrics, server = serve_manager_watch(
        metrics_port, metrics_addr, obj.storage(), max_connections=max_connections
    )
    try:
        _watch(obj, model, interval, metrics, server, as_json=as_json)
    finally:
        server.shutdown()


def _watch(
    obj: Context,
    model: str | None,
    interval: float,
    metrics: ManagerMetrics | None,
    server: WatchServer | None,
    *,
    as_json: bool,
) -> None:
    """Reconcile every ``interval`` seconds until SIGINT or SIGTERM."""
    stop = stop_on_signals()
    manager: RolloutManager | None = None
    recorded = None if server is None else (lambda s: server.offer(s.routing_table()))
    while True:
        work = functools.partial(
            _reconcile_pass,
            obj,
            manager,
            model,
            metrics=metrics,
            as_json=as_json,
            watch=True,
            recorded=recorded,
        )
        outcome = run_until_stopped(stop, work)
        if isinstance(outcome, RepoManagerError):
            click.echo(f"error: {outcome}", err=True)
        elif outcome is not None:
            manager = outcome
        if stop.is_set() or stop.wait(interval):
            return


def run_until_stopped(
    stop: threading.Event, work: Callable[[], RolloutManager]
) -> RolloutManager | RepoManagerError | None:
    """``work``'s result (or its error), or None as soon as ``stop`` is set: a pass runs
    in a thread of its own, so that a signal stops the manager even while a load call is
    slow (Triton answers a load only when it ended; the process exits, the load goes on
    in Triton and the next manager's survey sees how it ended)."""
    results: list[RolloutManager | RepoManagerError] = []
    crashed: list[BaseException] = []

    def run() -> None:
        try:
            results.append(work())
        except RepoManagerError as exc:
            results.append(exc)
        except BaseException as exc:  # raised again in the main thread, as if it ran there
            crashed.append(exc)

    worker = threading.Thread(target=run, name="reconcile-pass", daemon=True)
    worker.start()
    while worker.is_alive():
        if stop.wait(0.1):
            return None
    if crashed:
        raise crashed[0]
    return results[0] if results else None


def _reconcile_pass(
    obj: Context,
    manager: RolloutManager | None,
    model: str | None,
    *,
    metrics: ManagerMetrics | None,
    as_json: bool,
    watch: bool,
    recorded: Callable[[RolloutState], None] | None = None,
) -> RolloutManager:
    """One pass: (re)resolve the fleet, reconcile, publish state and the pass's figures."""
    started = time.monotonic()
    try:
        if manager is None:
            manager = obj.manager(metrics=metrics, recorded=recorded)
        elif has_dns(obj.urls):
            manager.fleet.set_urls(resolve_urls(obj.urls))
        reports = manager.reconcile(model)
        manager.expose_states(model)
    except RepoManagerError:
        if metrics is not None:
            metrics.reconcile_pass(seconds=time.monotonic() - started, ok=False)
        raise
    unreachable = sorted({u for r in reports for u in r.unreachable})
    refused = [r.refused for r in reports if r.refused]
    if metrics is not None:
        metrics.reconcile_pass(
            seconds=time.monotonic() - started,
            ok=not refused,
            actions={
                r.model: sum(not a.startswith("unreachable") for a in r.actions) for r in reports
            },
            unreachable=len(unreachable),
            servers=len(manager.fleet.servers),
            finished_at=time.time(),
        )
    documents = [
        {
            "model": r.model,
            "desired": r.desired,
            "actions": r.actions,
            "unreachable": r.unreachable,
            "refused": r.refused,
        }
        for r in reports
    ]
    emit(documents, as_json, reconcile_text(documents))
    if refused and not watch:
        raise IntegrityError("; ".join(refused))
    for line in refused:  # the long-running manager says it on every pass while it lasts
        click.echo(f"error: {line}", err=True)
    if not watch and unreachable:
        raise TritonUnavailableError(
            f"Triton unreachable at {', '.join(unreachable)}; the others are reconciled"
        )
    return manager
