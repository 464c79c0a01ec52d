"""Canary rollouts inside Triton: publish, set-weight, promote, rollback, policy, reconcile.

Ordering is what keeps requests from failing:
- a canary gets traffic only after every server reports it READY (warm-up done);
- a version loses traffic (routing table written) *before* it is unloaded, and the manager
  waits ``drain_seconds`` in between so every live Router has followed the table;
- transient phases are persisted before acting on Triton, so ``reconcile`` can finish a
  move that a dead manager left half done.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repo_manager.compat import check_plan_compatible
from repo_manager.errors import (
    GateFailedError,
    IllegalTransitionError,
    InvalidGateError,
    InvalidInputError,
    InvalidWeightError,
    MetricsUnavailableError,
    RepoManagerError,
    TritonError,
    WeightsError,
)
from repo_manager.gates import GoldenGates, LiveGates
from repo_manager.metrics import publish_rollout_state
from repo_manager.modelconfig import (
    ModelConfig,
    build_alias_config,
    merge_cc_model_filenames,
    render_config,
    with_version_policy,
)
from repo_manager.names import versions_model_name
from repo_manager.phases import Phase, check_transition
from repo_manager.repository import ModelRepository, validate_model_name, validate_version
from repo_manager.state import RolloutState, Transition, load_state, state_key, utc_now
from repo_manager.timing import PhaseTimer
from repo_manager.triton import TritonFleet

if TYPE_CHECKING:
    from repo_manager.analysis import MetricsProvider
    from repo_manager.validation import ValidationReport

__all__ = [
    "AnalysisPlan",
    "RolloutManager",
    "RolloutSettings",
    "parse_steps",
    "parse_weight",
    "resolve_weights",
]

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(kw_only=True, frozen=True)
class RolloutSettings:
    """Timing of a rollout's moves."""

    #: Seconds between taking traffic off a version and unloading it; must exceed the
    #: Routers' poll interval (0.2 s) plus the longest in-flight request. Default 1.5.
    drain_seconds: float = 1.5
    #: Seconds a version may take to load and warm up on every server. Default 300.
    ready_timeout: float = 300.0
    #: Share of traffic a new canary starts with, in percent. Default 10.
    canary_weight: int = 10


def parse_weight(value: str | int) -> int:
    """A canary weight: an integer percentage 0..100."""
    try:
        weight = int(str(value).strip())
    except ValueError:
        raise InvalidWeightError(f"invalid weight {value!r}: must be an integer 0..100") from None
    if not 0 <= weight <= 100:
        raise InvalidWeightError(f"invalid weight {weight}: must be between 0 and 100")
    return weight


def parse_steps(text: str) -> tuple[int, ...]:
    """``"10,25,50,100"`` -> increasing canary weights, 0..100.

    A first step of 0 judges the canary on shadow traffic only (Routers mirroring stable's
    requests) before any user request reaches it.
    """
    try:
        steps = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InvalidGateError(f"invalid --steps {text!r}: integers like 10,25,50,100") from None
    if not steps or any(not 0 <= s <= 100 for s in steps):
        raise InvalidGateError(f"invalid --steps {text!r}: each step must be 0..100")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise InvalidGateError(f"invalid --steps {text!r}: steps must increase")
    return steps


@dataclass(kw_only=True, frozen=True)
class AnalysisPlan:
    """How the progressive analysis moves a canary (persisted in the rollout state)."""

    #: Canary weights, one per passed interval; passing the last one promotes.
    #: Default 10, 25, 50, 100.
    steps: tuple[int, ...] = (10, 25, 50, 100)
    #: Failed checks at which the canary is rolled back. Default 2.
    threshold: int = 2
    #: Consecutive steps whose metrics source could not be read before the analysis
    #: stops with an error (the canary keeps its weight; never a rollback). Default 5.
    max_metrics_errors: int = 5
    gates: LiveGates = field(default_factory=LiveGates)

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise InvalidGateError(f"invalid threshold {self.threshold}: must be at least 1")
        if self.max_metrics_errors < 1:
            raise InvalidGateError(
                f"invalid max metrics errors {self.max_metrics_errors}: must be at least 1"
            )
        if not self.steps:
            raise InvalidGateError("the analysis needs at least one step")

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "threshold": self.threshold,
            "max_metrics_errors": self.max_metrics_errors,
            "gates": asdict(self.gates),
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> AnalysisPlan:
        return cls(
            steps=tuple(int(s) for s in document["steps"]),
            threshold=int(document["threshold"]),
            max_metrics_errors=int(document["max_metrics_errors"]),
            gates=LiveGates(**document.get("gates", {})),
        )


def resolve_weights(model: str, weights: str | None) -> Path:
    """The weights file: ``--weights`` or ``MODEL.pt`` here (no download offline)."""
    path = Path(weights) if weights else Path(f"{model}.pt")
    if not path.is_file():
        if weights:
            raise WeightsError(f"weights file {path} not found")
        raise WeightsError(
            f"no {path} here and it cannot be downloaded offline; pass --weights PATH"
        )
    return path


def parse_policy(
    *, latest: int | None, all_versions: bool, specific: str | None
) -> dict[str, Any] | None:
    """The ``policy`` command's options as a policy document (exactly one must be set)."""
    chosen = [x for x in (latest is not None, all_versions, specific is not None) if x]
    if len(chosen) != 1:
        raise InvalidInputError("give exactly one of --latest N, --all, --specific V[,V...]")
    if latest is not None:
        if latest < 1:
            raise InvalidInputError(f"invalid --latest {latest}: must be at least 1")
        return {"latest": latest}
    if all_versions:
        return {"all": True}
    assert specific is not None
    versions = sorted({validate_version(v) for v in specific.split(",") if v.strip()}, key=int)
    if not versions:
        raise InvalidInputError("--specific needs at least one version")
    return {"specific": versions}


@dataclass(kw_only=True)
class ReconcileReport:
    """What ``reconcile`` did for one model."""

    model: str
    desired: list[str]
    actions: list[str] = field(default_factory=list)
    #: Servers that could not be reached (reported, not fatal: the others are reconciled).
    unreachable: list[str] = field(default_factory=list)


def _expose(state: RolloutState) -> None:
    """The state as Prometheus gauges (weight, phase, failed checks, last gate values)."""
    analysis = state.analysis or {}
    last = analysis.get("last") or {}
    publish_rollout_state(
        state.model,
        phase=state.phase.value,
        phases=[p.value for p in Phase],
        canary_weight=state.weights.get(state.canary, 0) if state.canary else 0,
        stable=state.stable,
        canary=state.canary,
        failed_checks=int(analysis.get("failed_checks", 0)),
        metrics_errors=int(analysis.get("metrics_errors", 0)),
        gates=[(g["name"], g["value"], g["passed"]) for g in last.get("gates", [])],
    )


class RolloutManager:
    """Drives a model's rollout across the repository and every Triton server."""

    def __init__(
        self,
        repository: ModelRepository,
        fleet: TritonFleet,
        *,
        settings: RolloutSettings | None = None,
        progress: Progress = _quiet,
    ) -> None:
        self.repository = repository
        self.fleet = fleet
        self.settings = settings or RolloutSettings()
        self.progress = progress

    # -- state ----------------------------------------------------------------------------

    @contextmanager
    def _locked(self, model: str) -> Iterator[None]:
        with self.repository.storage.lock(f"{model}.lock"):
            yield

    def state(self, model: str) -> RolloutState | None:
        return load_state(self.repository.storage, validate_model_name(model))

    def _require_state(self, model: str, *, action: str) -> RolloutState:
        state = self.state(model)
        if state is None:
            raise IllegalTransitionError(f"cannot {action}: {model} was never published")
        return state

    def _record(
        self,
        state: RolloutState | None,
        new: RolloutState,
        *,
        action: str,
        reason: str = "",
        check: bool = True,
        public: str | None = None,
    ) -> RolloutState:
        """Check the move against the phase table, append history, persist atomically.

        ``public`` is the version the public name answers from after this move, when the
        move re-pointed it; otherwise the last entry's value is carried on.
        """
        source = state.phase if state else None
        if public is None and state is not None and state.history:
            public = state.history[-1].public
        if check:
            check_transition(source, new.phase, action=action)
        new.generation = (state.generation if state else 0) + 1
        new.history = [
            *(state.history if state else []),
            Transition(
                at=utc_now(),
                action=action,
                from_phase=source.value if source else None,
                to_phase=new.phase.value,
                stable=new.stable,
                canary=new.canary,
                weights=dict(new.weights),
                reason=reason,
                public=public,
            ),
        ]
        self.repository.storage.write_bytes_atomic(state_key(new.model), new.to_json())
        _expose(new)
        return new

    def desired_versions(self, state: RolloutState) -> list[str]:
        """Versions Triton must hold: the rollout's own plus those the policy keeps."""
        on_disk = self.repository.versions(state.model)
        extra: list[str] = []
        policy = state.policy or {}
        if policy.get("all"):
            extra = on_disk
        elif "latest" in policy:
            extra = on_disk[-int(policy["latest"]) :]
        elif "specific" in policy:
            extra = [v for v in policy["specific"] if v in on_disk]
        return sorted(set(state.serving_versions) | set(extra), key=int)

    def _apply(
        self,
        state: RolloutState,
        *,
        gone: list[str] | None = None,
        only: list[str] | None = None,
    ) -> list[str]:
        """Make every server (or ``only`` those) hold exactly the desired versions, with the
        public name answering from stable; returns the urls where the public name moved.

        Also keeps the on-disk configs true (version policy, alias pin), for a Triton that
        restarts. A version the public name still answers from must not be in ``gone``:
        retirements re-point it first (``_finish_retirement``).
        """
        versions = self.desired_versions(state)
        config = self.repository.require_config(state.model)
        count = len(only) if only is not None else len(self.fleet.servers)
        self.progress(f"loading {state.model} versions {','.join(versions)} on {count} server(s)")
        self.fleet.apply(
            versions_model_name(state.model),
            config,
            versions,
            gone=gone or [],
            timeout=self.settings.ready_timeout,
            only=only,
        )
        on_disk = with_version_policy(config, versions)
        if on_disk != config:
            self.repository.write_config(state.model, on_disk)
        return self._point_public(state, config, only=only)

    def _point_public(
        self, state: RolloutState, config: ModelConfig, *, only: list[str] | None
    ) -> list[str]:
        """The public name answers unpinned requests from stable (an ensemble pinning it)."""
        assert state.stable is not None
        alias = self._alias_config(state.model, config, state.stable)
        if self.repository.alias_config(state.model) != alias:
            self.repository.write_alias(state.model, alias)
        moved = self.fleet.point_alias(
            state.model, alias, timeout=self.settings.ready_timeout, only=only
        )
        if moved:
            self.progress(f"public name {state.model} answers from version {state.stable}")
        return moved

    @staticmethod
    def _alias_config(model: str, config: ModelConfig, stable: str) -> ModelConfig:
        return build_alias_config(
            name=model, target_name=versions_model_name(model), target=config, version=stable
        )

    def _drain(self) -> None:
        """Give every live Router time to follow the new routing table."""
        self.progress(f"draining for {self.settings.drain_seconds:.1f}s")
        time.sleep(self.settings.drain_seconds)

    # -- publish ----------------------------------------------------------------------------

    def publish(
        self,
        model: str,
        version: str,
        *,
        weights: Path | None = None,
        export_options: Any = None,
        exported: Path | None = None,
        canary_weight: int | None = None,
        force: bool = False,
        timer: PhaseTimer | None = None,
    ) -> RolloutState:
        """Export, stage and add a version; first becomes stable, later ones the canary.

        ``exported`` publishes a model folder that ``export`` already wrote (e.g. plans for
        several GPU kinds) instead of exporting ``weights``. ``force`` publishes a TensorRT
        plan even when the servers' release does not match. Each phase (export, stage,
        load + warm-up, routing table) is timed by ``timer`` (progress lines under
        ``--verbose``); the timings go into the history entry.
        """
        if (weights is None) == (exported is None):
            raise InvalidInputError("publish needs either weights or an exported folder")
        model = validate_model_name(model)
        version = validate_version(version)
        weight = parse_weight(
            self.settings.canary_weight if canary_weight is None else canary_weight
        )
        self.repository.require_new_version(model, version)
        state = self.state(model)
        target = Phase.INITIALIZED if state is None else Phase.PROGRESSING
        check_transition(state.phase if state else None, target, action=f"publish {version}")
        self.fleet.check_reachable()

        from export import export_model, stage_exported  # heavy (torch): publish only

        timer = timer or PhaseTimer(progress=self.progress)
        with tempfile.TemporaryDirectory(prefix="repo-manager-stage-") as tmp:
            staged = Path(tmp) / model
            with timer.phase("export"):
                if exported is not None:
                    result = stage_exported(exported, staged, model=model, version=version)
                else:
                    assert weights is not None
                    self.progress(f"exporting {weights} as {model} version {version}")
                    result = export_model(
                        weights, staged, model_name=model, version=version, options=export_options
                    )
                self.repository.check_compatible(model, result.config)
                check_plan_compatible(result.manifest, self.fleet.server_versions(), force=force)
            with self._locked(model):
                return self._add_and_load(
                    model, version, staged, result.config, state, weight, timer
                )

    def _add_and_load(
        self,
        model: str,
        version: str,
        staged: Path,
        staged_config: ModelConfig,
        state: RolloutState | None,
        weight: int,
        timer: PhaseTimer,
    ) -> RolloutState:
        """Move the staged version in and load it; ``staged_config`` is its parsed config."""
        # Re-read under the lock: another manager may have moved since the checks.
        if self.state(model) != state:
            raise IllegalTransitionError(f"{model} changed while exporting; publish again")
        self.repository.require_new_version(model, version)
        alias = None
        if state is None:
            # A new model's on-disk config names its only version from the start, and the
            # model it is in Triton: the versions model behind the public name.
            first = with_version_policy(staged_config, [version])
            first.name = versions_model_name(model)
            (staged / "config.pbtxt").write_bytes(render_config(first))
            alias = self._alias_config(model, first, version)
            new = RolloutState(
                model=model, phase=Phase.INITIALIZED, stable=version, weights={version: 100}
            )
        else:
            assert state.stable is not None
            new = RolloutState(
                model=model,
                phase=Phase.PROGRESSING,
                stable=state.stable,
                canary=version,
                weights={state.stable: 100 - weight, version: weight},
                policy=state.policy,
            )
        previous_config = None if state is None else self.repository.require_config(model)
        with timer.phase("stage"):
            created = self.repository.add_version(
                model, version, staged, progress=self.progress, alias=alias
            )
        try:
            if previous_config is not None:
                self._map_new_gpu_kinds(model, previous_config, staged_config)
            # Triton runs the config's model_warmup inside the load call: one phase.
            with timer.phase("load + warm-up"):
                self._apply(new)
        except RepoManagerError:
            self._undo_publish(model, version, state, created=created)
            if previous_config is not None:
                self.repository.write_config(model, previous_config)
            raise
        action = "publish stable" if state is None else f"publish canary at {weight}%"
        reason = f"timings: {timer.summary()}"
        with timer.phase("routing table"):
            return self._record(state, new, action=action, reason=reason, public=new.stable)

    def _map_new_gpu_kinds(self, model: str, current: ModelConfig, candidate: ModelConfig) -> None:
        """A version with plans for more GPU kinds extends the model's ``cc_model_filenames``."""
        merged = merge_cc_model_filenames(current, dict(candidate.cc_model_filenames))
        if merged != current:
            self.repository.write_config(model, merged)

    def _undo_publish(
        self, model: str, version: str, state: RolloutState | None, *, created: bool
    ) -> None:
        """Triton refused the new version: put servers and files back as they were."""
        self.progress(f"Triton refused {model} version {version}; restoring")
        try:
            if state is None:
                self.fleet.unload(model, versions_model_name(model))
            else:
                self._apply(state, gone=[version])
        except TritonError as exc:
            self.progress(f"restore on Triton failed ({exc}); run reconcile")
        finally:
            self.repository.remove_version(model, version, created_model=created)

    # -- traffic ----------------------------------------------------------------------------

    def set_weight(self, model: str, percent: str | int, *, reason: str = "") -> RolloutState:
        """Give the canary ``percent``; during an analysis a person takes over from it."""
        weight = parse_weight(percent)
        model = validate_model_name(model)
        with self._locked(model):
            state = self._require_state(model, action="set the weight")
            check_transition(state.phase, Phase.PROGRESSING, action="set the weight")
            if state.canary is None or state.stable is None:
                raise IllegalTransitionError(f"cannot set the weight: {model} has no canary")
            new = RolloutState(
                model=model,
                phase=Phase.PROGRESSING,
                stable=state.stable,
                canary=state.canary,
                weights={state.stable: 100 - weight, state.canary: weight},
                policy=state.policy,
            )
            return self._record(state, new, action=f"set-weight {weight}%", reason=reason)

    def promote(self, model: str, *, reason: str = "") -> RolloutState:
        """Canary becomes stable at 100%; the old stable is drained, then unloaded."""
        model = validate_model_name(model)
        with self._locked(model):
            state = self._require_state(model, action="promote")
            return self._promote(state, reason=reason)

    def _promote(self, state: RolloutState, *, reason: str = "") -> RolloutState:
        check_transition(state.phase, Phase.PROMOTING, action="promote")
        assert state.canary is not None and state.stable is not None
        return self._retire(
            state,
            keep=state.canary,
            retire=state.stable,
            via=Phase.PROMOTING,
            final=Phase.SUCCEEDED,
            actions=("promote", "promoted"),
            reason=reason,
        )

    def rollback(self, model: str, *, reason: str = "") -> RolloutState:
        """Stable back to 100%; the canary is drained, then unloaded."""
        model = validate_model_name(model)
        with self._locked(model):
            state = self._require_state(model, action="roll back")
            return self._rollback(state, reason=reason)

    def _rollback(self, state: RolloutState, *, reason: str = "") -> RolloutState:
        check_transition(state.phase, Phase.ROLLING_BACK, action="roll back")
        assert state.canary is not None and state.stable is not None
        return self._retire(
            state,
            keep=state.stable,
            retire=state.canary,
            via=Phase.ROLLING_BACK,
            final=Phase.ROLLED_BACK,
            actions=("rollback", "rolled back"),
            reason=reason,
        )

    def _retire(
        self,
        state: RolloutState,
        *,
        keep: str,
        retire: str,
        via: Phase,
        final: Phase,
        actions: tuple[str, str],
        reason: str,
    ) -> RolloutState:
        """Send 100% to ``keep`` (persisted as phase ``via``), then drain and unload."""
        self.fleet.check_reachable()
        moving = RolloutState(
            model=state.model,
            phase=via,
            stable=keep,
            retiring=retire,
            weights={keep: 100},
            policy=state.policy,
            analysis=state.analysis,
        )
        moving = self._record(state, moving, action=actions[0], reason=reason)
        return self._finish_retirement(moving, final, action=actions[1])

    def _finish_retirement(self, state: RolloutState, final: Phase, *, action: str) -> RolloutState:
        """Re-point the public name at the kept version, drain, unload the retired one.

        The first ``_apply`` changes no version (both stay loaded; with ``block_bytecode``
        Triton keeps them as they are) and moves only the alias; after a crash, reconcile
        runs this again and it does the same.
        """
        retiring = state.retiring
        assert retiring is not None and state.stable is not None
        self._apply(state)
        self._drain()
        done = RolloutState(
            model=state.model,
            phase=final,
            stable=state.stable,
            weights=dict(state.weights),
            policy=state.policy,
            analysis=state.analysis,  # kept: status shows the analysis that decided
        )
        gone = [] if retiring in self.desired_versions(done) else [retiring]
        self._apply(done, gone=gone)
        return self._record(
            state,
            done,
            action=action,
            reason=f"public name {state.model} answers from {state.stable}; unloaded {retiring}",
            public=state.stable,
        )

    # -- golden-set gate (before any traffic) ------------------------------------------------

    def validate(
        self, model: str, version: str, golden: str | Path, gates: GoldenGates | None = None
    ) -> ValidationReport:
        """Run the golden set through stable and ``version`` (both must be loaded)."""
        from repo_manager.routing import Router
        from repo_manager.validation import load_golden_set, run_golden_set

        model = validate_model_name(model)
        version = validate_version(version)
        load_golden_set(golden)  # bad input before touching anything
        state = self._require_state(model, action="validate")
        if version not in state.serving_versions:
            raise InvalidInputError(
                f"{model} version {version} is not loaded (serving: "
                f"{', '.join(state.serving_versions) or 'none'})"
            )
        assert state.stable is not None
        self.progress(f"running golden set {golden} through versions {state.stable}, {version}")
        with Router(model, url=self.fleet.urls, repository=self.repository.location) as router:
            return run_golden_set(
                router, stable=state.stable, candidate=version, golden=golden, gates=gates
            )

    def gate_canary(
        self, model: str, golden: str | Path, gates: GoldenGates, *, weight: int
    ) -> ValidationReport:
        """Judge a canary that has no traffic yet; pass: give it ``weight``; fail: roll back.

        Raises GateFailedError (after the rollback: stable serves 100%) when a gate fails.
        """
        state = self._require_state(model, action="validate")
        if state.canary is None:
            raise IllegalTransitionError(f"cannot validate: {model} has no canary")
        report = self.validate(model, state.canary, golden, gates)
        summary = "; ".join(g.describe() for g in report.gates)
        if report.passed:
            self.set_weight(model, weight, reason=f"golden gates passed: {summary}")
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
        model = validate_model_name(model)
        with self._locked(model):
            state = self._require_state(model, action="start the analysis")
            if state.phase is Phase.ANALYZING:
                return state  # already in charge: resume where it stands
            check_transition(state.phase, Phase.ANALYZING, action="start the analysis")
            assert state.stable is not None and state.canary is not None
            weight = plan.steps[0]
            new = RolloutState(
                model=model,
                phase=Phase.ANALYZING,
                stable=state.stable,
                canary=state.canary,
                weights={state.stable: 100 - weight, state.canary: weight},
                policy=state.policy,
                analysis={
                    "plan": plan.to_dict(),
                    "step": 0,
                    "failed_checks": 0,
                    "metrics_errors": 0,
                    "snapshot": None,
                    "last": None,
                },
            )
            return self._record(
                state,
                new,
                action=f"analysis started at {weight}%",
                reason=f"steps {','.join(map(str, plan.steps))}, threshold {plan.threshold}",
            )

    def advance(self, model: str, provider: MetricsProvider) -> RolloutState:
        """One analysis step: read live figures, judge the interval since the last step.

        Pass: next weight, or promote past the last step. Fail: one more failed check,
        rollback at the threshold. No data: nothing moves. Unreadable metrics: one more
        metrics error (never a failed check); at its own limit MetricsUnavailableError is
        raised and the canary keeps its weight. Every call records its decision and why.
        Outside the analyzing phase it changes nothing, so calling it again is safe.
        """
        from repo_manager.analysis import judge, snapshot_from_json, snapshot_to_json

        model = validate_model_name(model)
        with self._locked(model):
            state = self._require_state(model, action="advance")
            if state.phase is not Phase.ANALYZING or state.analysis is None:
                return state
            assert state.stable is not None and state.canary is not None
            analysis = dict(state.analysis)
            plan = AnalysisPlan.from_dict(analysis["plan"])
            weight = state.weights.get(state.canary, 0)
            try:
                now = provider.snapshot(model)
            except MetricsUnavailableError as exc:
                analysis["metrics_errors"] = int(analysis.get("metrics_errors", 0)) + 1
                limit = plan.max_metrics_errors
                errors = analysis["metrics_errors"]
                new = self._analysis_state(state, analysis, weight)
                self._record(
                    state,
                    new,
                    action=f"analysis: metrics unavailable ({errors}/{limit})",
                    reason=str(exc),
                )
                if errors >= limit:
                    raise MetricsUnavailableError(
                        f"{exc} ({errors} times in a row, limit {limit}); the canary keeps "
                        f"{weight}%: run rollout again once metrics are back"
                    ) from exc
                return new
            analysis["metrics_errors"] = 0
            before = analysis.get("snapshot")
            analysis["snapshot"] = snapshot_to_json(now)
            if before is None:
                new = self._analysis_state(state, analysis, weight)
                return self._record(
                    state, new, action="analysis: baseline", reason="first reading of metrics"
                )
            verdict = judge(
                now,
                snapshot_from_json(before),
                stable=state.stable,
                canary=state.canary,
                gates=plan.gates,
            )
            analysis["last"] = verdict.to_dict()
            if verdict.outcome == "no-data":
                new = self._analysis_state(state, analysis, weight)
                return self._record(
                    state, new, action=f"analysis: no verdict at {weight}%", reason=verdict.reason
                )
            if verdict.outcome == "fail":
                failed = int(analysis.get("failed_checks", 0)) + 1
                analysis["failed_checks"] = failed
                new = self._analysis_state(state, analysis, weight)
                new = self._record(
                    state,
                    new,
                    action=f"analysis: check failed at {weight}% ({failed}/{plan.threshold})",
                    reason=verdict.reason,
                )
                if failed >= plan.threshold:
                    return self._rollback(
                        new,
                        reason=f"{failed} failed checks (threshold {plan.threshold}): "
                        f"{verdict.reason}",
                    )
                return new
            step = int(analysis.get("step", 0)) + 1
            if step >= len(plan.steps):
                analysis["step"] = step
                new = self._analysis_state(state, analysis, weight)
                new = self._record(
                    state,
                    new,
                    action=f"analysis: passed the last step at {weight}%",
                    reason=verdict.reason,
                )
                return self._promote(new, reason="analysis passed every step")
            analysis["step"] = step
            new = self._analysis_state(state, analysis, plan.steps[step])
            return self._record(
                state,
                new,
                action=f"analysis: passed at {weight}%, now {plan.steps[step]}%",
                reason=verdict.reason,
            )

    @staticmethod
    def _analysis_state(state: RolloutState, analysis: dict[str, Any], weight: int) -> RolloutState:
        assert state.stable is not None and state.canary is not None
        return RolloutState(
            model=state.model,
            phase=Phase.ANALYZING,
            stable=state.stable,
            canary=state.canary,
            weights={state.stable: 100 - weight, state.canary: weight},
            policy=state.policy,
            analysis=analysis,
        )

    # -- policy -----------------------------------------------------------------------------

    def set_policy(self, model: str, policy: dict[str, Any] | None) -> RolloutState:
        """Keep extra versions loaded (e.g. the previous stable, for a fast rollback)."""
        model = validate_model_name(model)
        with self._locked(model):
            state = self._require_state(model, action="set the policy")
            if "specific" in (policy or {}):
                missing = [
                    v
                    for v in (policy or {})["specific"]
                    if not self.repository.has_version(model, v)
                ]
                if missing:
                    raise InvalidInputError(
                        f"{model} has no version {', '.join(missing)} in {self.repository.location}"
                    )
            self.fleet.check_reachable()
            new = RolloutState(
                model=model,
                phase=state.phase,
                stable=state.stable,
                canary=state.canary,
                retiring=state.retiring,
                weights=dict(state.weights),
                policy=policy,
                analysis=state.analysis,
            )
            before = set(self.desired_versions(state))
            after = set(self.desired_versions(new))
            self._apply(new, gone=sorted(before - after, key=int))
            # The policy changes no phase: recorded without consulting the phase table.
            return self._record(state, new, action=f"policy {policy}", check=False)

    # -- reconcile --------------------------------------------------------------------------

    def models(self) -> list[str]:
        return [m for m in self.repository.models() if self.state(m) is not None]

    def expose_states(self, model: str | None = None) -> None:
        """Publish the persisted rollout state of each model as gauges, whichever process
        wrote it (the watching manager serves them while others run rollouts)."""
        for name in [validate_model_name(model)] if model else self.models():
            state = self.state(name)
            if state is not None:
                _expose(state)

    def reconcile(self, model: str | None = None) -> list[ReconcileReport]:
        """Re-apply desired state: finish half-done moves, reload what servers lack."""
        models = [validate_model_name(model)] if model else self.models()
        reports = []
        for name in models:
            with self._locked(name):
                state = self._require_state(name, action="reconcile")
                report = ReconcileReport(model=name, desired=self.desired_versions(state))
                if state.phase is Phase.PROMOTING:
                    self._finish_retirement(state, Phase.SUCCEEDED, action="promoted (reconcile)")
                    report.actions.append("finished promote")
                elif state.phase is Phase.ROLLING_BACK:
                    self._finish_retirement(
                        state, Phase.ROLLED_BACK, action="rolled back (reconcile)"
                    )
                    report.actions.append("finished rollback")
                else:
                    desired = set(report.desired)
                    survey = self.fleet.survey(versions_model_name(name), alias=name)
                    report.unreachable = [s.url for s in survey if s.error]
                    # Only servers that lack the desired versions, or whose public name
                    # answers from another version, are touched.
                    stale = [
                        s.url
                        for s in survey
                        if not s.error and (s.ready != desired or s.public != state.stable)
                    ]
                    if stale:
                        self._apply(state, gone=[], only=stale)
                        report.actions.append(
                            f"loaded {','.join(report.desired)} on {', '.join(stale)}"
                        )
                    if report.unreachable:
                        report.actions.append(f"unreachable: {', '.join(report.unreachable)}")
                reports.append(report)
        return reports

    # -- status -----------------------------------------------------------------------------

    def status(self, model: str) -> dict[str, Any]:
        """The status document of DESIGN.md (plus per-server detail and last move)."""
        model = validate_model_name(model)
        state = self.state(model)
        if state is None:
            raise InvalidInputError(f"{model} was never published to {self.repository.location}")
        survey = self.fleet.survey(versions_model_name(model), alias=model)
        # Versions as the first server that answers reports them.
        first = next((s for s in survey if s.error is None), survey[0])
        reported = {v.version: v.state for v in first.versions}
        versions = [
            {"version": v, "state": reported.get(v, "UNAVAILABLE" if first.error else "UNLOADED")}
            for v in self.repository.versions(model)
        ]
        last = state.history[-1] if state.history else None
        return {
            "model": model,
            "stable": state.stable,
            "canary": state.canary,
            "weights": state.weights,
            "phase": state.phase.value,
            "versions": versions,
            "versions_model": versions_model_name(model),
            # What a client that names no version gets (the alias on the first server).
            "public": {"name": model, "version": None if first.error else first.public},
            "generation": state.generation,
            "policy": state.policy,
            "servers": [
                {
                    "url": s.url,
                    "error": s.error,
                    "public": s.public,
                    "versions": [{"version": v.version, "state": v.state} for v in s.versions],
                }
                for s in survey
            ],
            "analysis": state.analysis
            and {k: v for k, v in state.analysis.items() if k != "snapshot"},
            "last_transition": None
            if last is None
            else {
                "at": last.at,
                "action": last.action,
                "from": last.from_phase,
                "to": last.to_phase,
                "reason": last.reason,
            },
        }
