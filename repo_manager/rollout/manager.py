"""Canary rollouts inside Triton: publish, set-weight, promote, rollback, policy, reconcile.

Ordering is what keeps requests from failing:
- a canary gets traffic only after every server reports it READY (warm-up done);
- a version loses traffic (routing table written) *before* it is unloaded, and the manager
  waits ``drain_seconds`` in between so every live Router has followed the table;
- transient phases are persisted before acting on Triton, so ``reconcile`` can finish a
  move that a dead manager left half done.

Each move is a few small steps and one ``Ledger.record`` per decision (like argo-rollouts'
reconcile: steps, then one persist of the status).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repo_manager.contract import contract_of
from repo_manager.errors import (
    GateFailedError,
    GateUndecidedError,
    IllegalTransitionError,
    IntegrityError,
    InvalidInputError,
    RepoManagerError,
)
from repo_manager.gates import GoldenGates
from repo_manager.history.incident import write_incident
from repo_manager.names import validate_model_name, validate_version, versions_model_name
from repo_manager.phases import Phase, check_transition
from repo_manager.progress import as_progress
from repo_manager.repository import ModelRepository
from repo_manager.rollout import analysis_step
from repo_manager.rollout import guard as canary_guard
from repo_manager.rollout.applier import FleetApplier, Progress
from repo_manager.rollout.approval import Approvals
from repo_manager.rollout.cohorts import weight_move
from repo_manager.rollout.guard import GuardSettings
from repo_manager.rollout.health import HealthWatch
from repo_manager.rollout.integrity_guard import IntegrityGuard, Tolerate
from repo_manager.rollout.ledger import KEEP, Keep, Ledger, with_canary_at
from repo_manager.rollout.publishing import Publisher, PublishRequest
from repo_manager.rollout.reconciler import Reconciler, ReconcileReport
from repo_manager.rollout.retirement import Retirement
from repo_manager.rollout.server_moves import ServerMoves
from repo_manager.rollout.setting_changes import SettingChanges
from repo_manager.rollout.settings import AnalysisPlan, RolloutSettings
from repo_manager.rollout.status import server_rows, status_document
from repo_manager.state import RolloutState
from repo_manager.timing import PhaseTimer
from repo_manager.triton import TritonFleet
from repo_manager.unpinned import WEIGHTED

if TYPE_CHECKING:
    from repo_manager.analysis import MetricsProvider
    from repo_manager.metrics import ManagerMetrics
    from repo_manager.routing import Router
    from repo_manager.validation import ValidationReport

__all__ = ["ReconcileReport", "RolloutManager"]


def _quiet(_: str) -> None:
    return None


class RolloutManager:
    """Drives a model's rollout across the repository and every Triton server."""

    def __init__(
        self,
        repository: ModelRepository,
        fleet: TritonFleet,
        *,
        settings: RolloutSettings | None = None,
        progress: Progress = _quiet,
        metrics: ManagerMetrics | None = None,
        recorded: Callable[[RolloutState], None] | None = None,
    ) -> None:
        """``metrics``: where every recorded state is exposed (None: nowhere; a command
        that serves the manager's metrics passes its own); ``recorded`` hears of every
        state once persisted (the long-running manager pushes its table to Routers)."""
        self.repository = repository
        self.fleet = fleet
        self.settings = settings or RolloutSettings()
        self.progress = progress
        self.applier = FleetApplier(repository, fleet, settings=self.settings, progress=progress)
        self.recorded = recorded
        self.ledger = Ledger(repository.storage, metrics=metrics, recorded=self._follow_weights)
        self.retirement = Retirement(self.applier, self.ledger)
        self.publisher = Publisher(self.applier, self.ledger)
        self.settings_changes = SettingChanges(self.applier, self.ledger)
        self.guard = IntegrityGuard(self.applier, self.ledger, self.retirement)
        self.reconciler = Reconciler(self.publisher, self.retirement, self.guard)
        self.server_moves = ServerMoves(self.applier, self.ledger)
        self.approvals = Approvals(
            self.ledger, rollback=self.retirement.rollback, moves=self.server_moves
        )

    def state(self, model: str) -> RolloutState | None:
        return self.ledger.load(model)

    def _follow_weights(self, state: RolloutState) -> None:
        """A weighted public name follows every recorded move (set-weight, each analysis
        step, promote, rollback) on every server; in stable mode only ``apply`` moves it.
        Listeners hear first: the table is written whether or not a server follows."""
        if self.recorded is not None:
            self.recorded(state)
        if state.unpinned == WEIGHTED and state.stable is not None:
            self.applier.point_public(state)

    def _guarded(self, model: str, tolerate: Tolerate | None = None) -> None:
        """The integrity guard, under the model's lock, for a command that takes the lock
        itself afterwards (a published model only)."""
        model = validate_model_name(model)
        with self.ledger.locked(model):
            state = self.ledger.load(model)
            if state is not None:
                self.guard.check(state, tolerate or Tolerate())

    def desired_versions(self, state: RolloutState) -> list[str]:
        """Versions Triton must hold: the rollout's own plus those the policy keeps."""
        return self.applier.desired_versions(state)

    # -- publish ----------------------------------------------------------------------------

    def check_publish(
        self,
        model: str,
        version: str,
        *,
        canary_weight: int | None = None,
        replace: bool = False,
        servers: tuple[str, ...] | None = None,
    ) -> PublishRequest:
        """Refuse a publish before its (slow) export: names, weight, version, phase, a
        canary in progress (unless ``replace``), servers.

        ``publish`` checks all of it again; this is for callers that export first.
        """
        self._guarded(model)
        return self.publisher.check(
            model, version, canary_weight=canary_weight, replace=replace, servers=servers
        )

    def publish(
        self,
        model: str,
        version: str,
        *,
        staged: Path,
        canary_weight: int | None = None,
        force: bool = False,
        timer: PhaseTimer | None = None,
        replace: bool = False,
        servers: tuple[str, ...] | None = None,
    ) -> RolloutState:
        """Add the exported ``version`` staged at ``staged``; the first becomes stable, later
        ones the canary at ``canary_weight`` (default: the settings').

        ``staged`` holds ``config.pbtxt`` and ``<version>/`` with its ``manifest.json``, made
        for this publish (the manager may change it; the caller removes it). ``force``
        publishes a TensorRT plan even when the servers' release does not match. Each phase
        (upload, load + warm-up, routing table; the caller times its export with the same
        ``timer``) prints under ``--verbose``; the timings go into the history entry. A
        canary in progress is replaced only with ``replace`` (the history says which).
        ``servers``: the only servers that load the canary (None: every server).
        """
        self._guarded(model)
        return self.publisher.publish(
            model,
            version,
            staged=Path(staged),
            canary_weight=canary_weight,
            force=force,
            timer=timer or PhaseTimer(progress=self.progress),
            replace=replace,
            servers=servers,
        )

    # -- traffic ----------------------------------------------------------------------------

    def set_weight(
        self,
        model: str,
        percent: str | int,
        *,
        reason: str = "",
        cohort: str | None = None,
        others: str | int | None = None,
        servers: tuple[str, ...] | Keep | None = KEEP,
    ) -> RolloutState:
        """Give the canary ``percent``; during an analysis a person takes over from it.

        With a ``cohort`` rule, ``percent`` is the canary's weight inside the cohort and
        ``others`` (default 0) everyone else's; ``"-"`` clears the cohort; without one the
        cohort stands and ``percent`` is the weight outside it (``rollout.cohorts``).
        Given ``servers`` (None: every one; ``server_moves.select``), the canary moves to
        those servers too.
        """
        move = weight_move(percent, cohort, others)
        model = validate_model_name(model)
        with self.ledger.locked(model):
            state = self.guard.check(self.ledger.require(model, action="set the weight"))
            check_transition(state.phase, Phase.PROGRESSING, action="set the weight")
            if state.canary is None or state.stable is None:
                raise IllegalTransitionError(f"cannot set the weight: {model} has no canary")
            self.fleet.check_reachable()  # like every other move: an unreachable fleet, exit 1
            new = with_canary_at(
                state, move.outside, phase=Phase.PROGRESSING, cohort=move.cohort, servers=servers
            )
            return self.server_moves.record(state, new, action=move.action(new), reason=reason)

    def promote(self, model: str, *, reason: str = "") -> RolloutState:
        """Canary becomes stable at 100%; the old stable is drained, then unloaded."""
        model = validate_model_name(model)
        with self.ledger.locked(model):
            state = self.ledger.require(model, action="promote")
            state = self.guard.check(state, Tolerate(stable=True))  # a canary replaces it
            return self.retirement.promote(state, reason=reason)

    def rollback(self, model: str, *, reason: str = "") -> RolloutState:
        """Stable back to 100%; the canary is drained, then unloaded."""
        model = validate_model_name(model)
        with self.ledger.locked(model):
            state = self.ledger.require(model, action="roll back")
            state = self.guard.check(state, Tolerate(canary=True))  # what a rollback removes
            return self.retirement.rollback(state, reason=reason)

    # -- the manager's own Router -----------------------------------------------------------

    def router(self, model: str, **options: Any) -> Router:
        """A Router on exactly what this manager reaches: its servers, with their TLS files
        and headers, the fleet's per-request deadline, and its repository with the S3
        endpoint that repository was opened with (not the environment's).

        The one way the manager makes a Router (``validate``, the golden gate), so no
        setting given to the manager is dropped on the way. ``options``: further Router
        keyword arguments.
        """
        from repo_manager.routing import Router

        storage = self.repository.storage
        return Router(
            model,
            url=self.fleet.urls,
            repository=storage.location,
            security=self.fleet.security,
            # Only S3Storage has one; a folder has none (boto3 stays out of the import).
            s3_endpoint=getattr(storage, "endpoint_url", None),
            timeout=self.fleet.request_timeout,
            **options,
        )

    # -- golden-set gate (before any traffic) ------------------------------------------------

    def validate(
        self, model: str, version: str, golden: str | Path, gates: GoldenGates | None = None
    ) -> ValidationReport:
        """Run the golden set through stable and ``version``: any version Triton holds,
        the rollout's own or one a version policy keeps loaded.

        Raises GateUndecidedError when stable gives the gates nothing to judge against.
        """
        from repo_manager.validation import load_golden_set, run_golden_set

        model = validate_model_name(model)
        version = validate_version(version)
        load_golden_set(golden)  # bad input before touching anything
        state = self.ledger.require(model, action="validate")
        loaded = self.desired_versions(state)
        if version not in loaded:
            raise InvalidInputError(
                f"{model} version {version} is not loaded (loaded: {', '.join(loaded) or 'none'}; "
                f"keep it loaded with: repo-manager policy {model} --specific {version})"
            )
        assert state.stable is not None
        stage = f"golden set {golden}: versions {state.stable} and {version}"
        with as_progress(self.progress).stage(stage), self.router(model) as router:
            return run_golden_set(
                router, stable=state.stable, candidate=version, golden=golden, gates=gates
            )

    def gate_canary(
        self,
        model: str,
        golden: str | Path,
        gates: GoldenGates,
        *,
        weight: int,
        cohort: str | None = None,
    ) -> ValidationReport:
        """Judge a canary that has no traffic yet; pass: give it ``weight`` (inside the
        ``cohort`` rule, with one: ``set_weight``); fail: roll back.

        Raises GateFailedError (after the rollback: stable serves 100%) when a gate fails,
        GateUndecidedError (nothing moved: the canary keeps its weight) when the gates
        cannot judge it.
        """
        state = self.ledger.require(model, action="validate")
        if state.canary is None:
            raise IllegalTransitionError(f"cannot validate: {model} has no canary")
        try:
            report = self.validate(model, state.canary, golden, gates)
        except GateUndecidedError as exc:
            held = state.weights.get(state.canary, 0)
            raise GateUndecidedError(
                f"{exc}; canary {state.canary} stays at {held}%: fix stable or the golden "
                f"set and run validate, or roll back"
            ) from exc
        summary = "; ".join(g.describe() for g in report.gates)
        if report.passed:
            self.set_weight(model, weight, reason=f"golden gates passed: {summary}", cohort=cohort)
            return report
        failures = "; ".join(g.describe() for g in report.failures())
        self.rollback(model, reason=f"golden gate failed: {failures}")
        raise GateFailedError(
            f"{model} version {report.candidate.version} failed the golden gate ({failures}); "
            f"rolled back, stable {report.stable.version} serves 100%"
        )

    # -- progressive analysis ----------------------------------------------------------------

    def start_analysis(self, model: str, plan: AnalysisPlan) -> RolloutState:
        """Put the analysis in charge of the canary at its first step (or resume it)."""
        self.server_moves.check_waves(plan)
        return analysis_step.start_analysis(self.ledger, model, plan, self.server_moves)

    def stop_analysis(self, model: str, reason: str) -> RolloutState | None:
        """Record why the analysis stopped; the canary keeps its weight (``rollout`` resumes)."""
        return analysis_step.stop_analysis(self.ledger, model, reason)

    def advance(self, model: str, provider: MetricsProvider) -> RolloutState:
        """One analysis step (``analysis_step.advance``): promotes past the last step, rolls
        back at the failed-check threshold."""
        self._guarded(model)
        return analysis_step.advance(
            self.ledger,
            model,
            provider,
            promote=self.retirement.promote,
            rollback=self._rolled_back_by_analysis,
            moves=self.server_moves,
        )

    def _rolled_back_by_analysis(self, state: RolloutState, *, reason: str) -> RolloutState:
        """Roll back, then write the post-mortem beside the state (``history.incident``)."""
        after = self.retirement.rollback(state, reason=reason)
        try:
            survey = self.fleet.survey(versions_model_name(after.model), alias=after.model)
            servers = server_rows(survey)
        except RepoManagerError as exc:  # the post-mortem says so; the rollback stands
            servers = [{"url": "", "error": str(exc), "public": None, "versions": []}]
        write_incident(self.repository.storage, after, servers=servers)
        return after

    def judge_canary(
        self,
        model: str,
        provider: MetricsProvider,
        settings: GuardSettings,
        health: HealthWatch | None = None,
    ) -> RolloutState | None:
        """The long-running manager's judgement of ``model``'s canary this pass
        (``guard.judge_canary``); None when nothing was due."""
        return canary_guard.judge_canary(
            self.ledger,
            model,
            provider.snapshot,
            settings,
            promote=self.retirement.promote,
            rollback=self._rolled_back_by_analysis,
            health=health,
            ready=self._ready_everywhere,
            moves=self.server_moves,
        )

    def _ready_everywhere(self, model: str, version: str) -> bool:
        """READY on every server that answers and should hold it (a canary limited to
        some servers: those); one that does not answer is reconcile's matter."""
        state = self.ledger.load(model)
        survey = self.fleet.survey(versions_model_name(model))
        return all(
            version in s.ready
            for s in survey
            if s.error is None and (state is None or state.may_hold(version, s.url))
        )

    # -- settings (no phase moves) ---------------------------------------------------------

    def set_policy(self, model: str, policy: dict[str, Any] | None) -> RolloutState:
        """Keep extra versions loaded (e.g. the previous stable, for a fast rollback)."""
        self._guarded(model)
        return self.settings_changes.set_policy(model, policy)

    def set_unpinned(
        self, model: str, mode: str | None, *, shadow: float | None = None
    ) -> RolloutState:
        """What the public name does with requests that name no version (``SettingChanges``)."""
        self._guarded(model)
        return self.settings_changes.set_unpinned(model, mode, shadow=shadow)

    # -- reconcile --------------------------------------------------------------------------

    def models(self) -> list[str]:
        return [m for m in self.repository.models() if self.state(m) is not None]

    def _reconciled_models(self) -> list[str]:
        """Published models, and models whose first publish a killed manager left."""
        pending = [m for m in self.ledger.journaled_models() if self.ledger.pending_publish(m)]
        return sorted(set(self.models()) | set(pending))

    def expose_states(self, model: str | None = None) -> None:
        """Publish the persisted rollout state of each model as gauges, whichever process
        wrote it (the watching manager serves them while others run rollouts)."""
        if self.ledger.metrics is None:
            return
        for name in [validate_model_name(model)] if model else self.models():
            state = self.state(name)
            if state is not None:
                self.ledger.expose(state)

    def reconcile(self, model: str | None = None) -> list[ReconcileReport]:
        """Re-apply desired state: undo publishes a killed manager left, finish half-done
        moves, reload what servers lack."""
        models = [validate_model_name(model)] if model else self._reconciled_models()
        reports = []
        for name in models:
            with self.ledger.locked(name):
                try:
                    reports.append(self.reconciler.reconcile_one(name))
                except IntegrityError as exc:  # said, and the other models reconciled
                    reports.append(ReconcileReport(model=name, desired=[], refused=str(exc)))
        return reports

    # -- status -----------------------------------------------------------------------------

    def status(self, model: str) -> dict[str, Any]:
        """The status document of DESIGN.md (plus per-server detail and last move)."""
        return self.status_with_state(model)[0]

    def status_with_state(self, model: str) -> tuple[dict[str, Any], RolloutState]:
        """The status document and the one state read it was made from (a watch that read
        them apart once showed a frame older than the state it then stopped on)."""
        model = validate_model_name(model)
        state = self.state(model)
        if state is None:
            raise InvalidInputError(f"{model} was never published to {self.repository.location}")
        survey = self.fleet.survey(versions_model_name(model), alias=model)
        config = self.repository.config(model)
        contract = None if config is None else contract_of(config)
        refused = self.guard.findings(state)
        document = status_document(
            state, survey, self.repository.versions(model), refused, contract
        )
        return document, state
