"""``reconcile`` (re-apply the desired state once) and ``reconcile --watch`` (the
long-running manager, with its metrics)."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from repo_manager.cli.app import Context, cli, emit, require_repository
from repo_manager.cli.options import (
    json_option,
    metrics_source,
    metrics_source_options,
    parse_interval,
    serve_manager_watch,
    serve_metrics_options,
    stop_on_signals,
    verdict_options,
)
from repo_manager.cli.render import reconcile_text, transition_text
from repo_manager.discovery import has_dns, resolve_urls
from repo_manager.errors import (
    IntegrityError,
    InvalidInputError,
    RepoManagerError,
    TritonUnavailableError,
)
from repo_manager.gates import LiveGates, parse_gate_overrides
from repo_manager.links import DecisionPages, Link, LinkSigner
from repo_manager.metrics import ManagerMetrics
from repo_manager.rollout import RolloutManager
from repo_manager.rollout.guard import GuardSettings
from repo_manager.rollout.health import HealthWatch
from repo_manager.state import RolloutState
from repo_manager.watch import WatchServer

if TYPE_CHECKING:
    from repo_manager.analysis import MetricsProvider


@cli.command()
@click.argument("model", required=False)
@click.option("--watch", is_flag=True, help="Keep reconciling every --interval.")
@click.option(
    "--interval",
    default="10s",
    show_default=True,
    help="Time between passes (10s, 1m, 500ms), and between two checks of a guarded canary.",
)
@click.option(
    "--judge/--no-judge",
    default=True,
    show_default=True,
    help="With --watch: take the steps of detached analyses (rollout --detach) and guard "
    "every canary at a fixed weight (rolled back on failed checks, never promoted), "
    "reading the metrics sources below.",
)
@verdict_options
@metrics_source_options
@click.option(
    "--link-key",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="REPO_MANAGER_LINK_KEY_FILE",
    default=None,
    help="With --metrics-port: sign one-click approve/reject links with this key (a file "
    "of at least 16 bytes only the manager reads); notifications of a waiting analysis "
    "carry them, /decide/... on the port takes them once.",
)
@click.option(
    "--public-url",
    envvar="REPO_MANAGER_PUBLIC_URL",
    default=None,
    help="How people reach the manager's port, for the links (default http://ADDR:PORT).",
)
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
    interval: str,
    judge: bool,
    threshold: int,
    max_metrics_errors: int,
    live_gates: tuple[str, ...],
    metrics_urls: tuple[str, ...],
    prometheus: str | None,
    link_key: Path | None,
    public_url: str | None,
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
    if link_key is not None and metrics_port is None:
        raise InvalidInputError("--link-key needs --metrics-port (the links point there)")
    signer = None
    if link_key is not None:
        base = public_url or f"http://{metrics_addr}:{metrics_port}"
        signer = LinkSigner.from_file(link_key, base_url=base)
    seconds = parse_interval(interval)
    if seconds < 0.5:
        raise InvalidInputError(f"invalid --interval {interval!r}: at least 500ms")
    judging = None
    if watch and judge:
        settings = GuardSettings(
            interval_s=seconds,
            threshold=threshold,
            max_metrics_errors=max_metrics_errors,
            gates=parse_gate_overrides(LiveGates(), live_gates),
        )
        judging = Judging(provider=metrics_source(prometheus, metrics_urls), settings=settings)
    require_repository(obj)
    if not watch:
        _reconcile_pass(obj, None, model, metrics=None, as_json=as_json, watch=False)
        return
    if metrics_port is None:
        _watch(obj, model, seconds, None, None, as_json=as_json, judging=judging)
        return
    metrics, server = serve_manager_watch(
        metrics_port, metrics_addr, obj.storage(), max_connections=max_connections
    )
    if signer is not None:
        server.decide = _decision_pages(obj, signer)
        if obj.notifier is not None:
            obj.notifier.links = signer
    try:
        _watch(obj, model, seconds, metrics, server, as_json=as_json, judging=judging)
    finally:
        server.shutdown()


@dataclass(kw_only=True, frozen=True)
class Judging:
    """Where the long-running manager reads live figures, and how it guards canaries."""

    provider: MetricsProvider
    settings: GuardSettings
    #: Each canary's health between passes (an emergency rollback needs no interval).
    health: HealthWatch = field(default_factory=HealthWatch)


def _watch(
    obj: Context,
    model: str | None,
    interval: float,
    metrics: ManagerMetrics | None,
    server: WatchServer | None,
    *,
    as_json: bool,
    judging: Judging | None,
) -> None:
    """Reconcile (and judge canaries) every ``interval`` seconds until SIGINT or SIGTERM."""
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
            judging=judging,
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
    judging: Judging | None = None,
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
    if obj.notifier is not None:
        for report in reports:
            done = [a for a in report.actions if not a.startswith("unreachable")]
            if done:
                obj.notifier.send(
                    {
                        "model": report.model,
                        "action": "reconcile",
                        "reason": "; ".join(done),
                        "actions": done,
                    }
                )
    if judging is not None:
        for report in reports:
            _judge(manager, report.model, judging)
    if refused and not watch:
        raise IntegrityError("; ".join(refused))
    for line in refused:  # the long-running manager says it on every pass while it lasts
        click.echo(f"error: {line}", err=True)
    if not watch and unreachable:
        raise TritonUnavailableError(
            f"Triton unreachable at {', '.join(unreachable)}; the others are reconciled"
        )
    return manager


def _judge(manager: RolloutManager, model: str, judging: Judging) -> None:
    """One model's canary judged this pass; each decision it recorded printed (an error
    is one line: the other models are still judged, the next pass tries again)."""
    before = manager.state(model)
    try:
        after = manager.judge_canary(model, judging.provider, judging.settings, judging.health)
    except RepoManagerError as exc:
        click.echo(f"error: judging {model}: {exc}", err=True)
        return
    if after is None or before is None:
        return
    for transition in after.history[len(after.history) - (after.generation - before.generation) :]:
        click.echo(transition_text(transition))


def _decision_pages(obj: Context, signer: LinkSigner) -> DecisionPages:
    """The one-click links' pages, acting through a manager of their own (the pass's
    manager belongs to the pass thread)."""
    managers: list[RolloutManager] = []

    def manager() -> RolloutManager:
        if not managers:
            managers.append(obj.manager())
        return managers[0]

    def act(link: Link) -> str:
        state = manager().approvals.by_link(link, signer)
        return transition_text(state.history[-1])

    def canary_of(model: str) -> str | None:
        state = manager().state(model)
        return None if state is None else state.canary

    return DecisionPages(signer, act=act, canary_of=canary_of)
