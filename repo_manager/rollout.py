"""Canary rollouts inside Triton: publish, set-weight, promote, rollback, policy, reconcile.

Ordering is what keeps requests from failing:
- a canary gets traffic only after every server reports it READY (warm-up done);
- a version loses traffic (routing table written) *before* it is unloaded, and the manager
  waits ``drain_seconds`` in between so every live Router has followed the table;
- transient phases are persisted before acting on Triton, so ``reconcile`` can finish a
  move that a dead manager left half done.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repo_manager.errors import (
    IllegalTransitionError,
    InvalidInputError,
    InvalidWeightError,
    RepoManagerError,
    TritonError,
    WeightsError,
)
from repo_manager.modelconfig import parse_config, render_config, with_version_policy
from repo_manager.phases import Phase, check_transition
from repo_manager.repository import ModelRepository, validate_model_name, validate_version
from repo_manager.state import RolloutState, Transition, load_state, state_key, utc_now
from repo_manager.triton import TritonFleet

__all__ = ["RolloutManager", "RolloutSettings", "parse_weight", "resolve_weights"]

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
    ) -> RolloutState:
        """Check the move against the phase table, append history, persist atomically."""
        source = state.phase if state else None
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
            ),
        ]
        self.repository.storage.write_bytes_atomic(state_key(new.model), new.to_json())
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
    ) -> None:
        """Make every server (or ``only`` those) hold exactly the desired versions.

        Also keeps the on-disk config's version policy true, for a Triton that restarts.
        """
        versions = self.desired_versions(state)
        config = self.repository.require_config(state.model)
        count = len(only) if only is not None else len(self.fleet.servers)
        self.progress(f"loading {state.model} versions {','.join(versions)} on {count} server(s)")
        self.fleet.apply(
            state.model,
            config,
            versions,
            gone=gone or [],
            timeout=self.settings.ready_timeout,
            only=only,
        )
        on_disk = with_version_policy(config, versions)
        if on_disk != config:
            self.repository.write_config(state.model, on_disk)

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
        weights: Path,
        export_options: Any,
        canary_weight: int | None = None,
    ) -> RolloutState:
        """Export, stage and add a version; first becomes stable, later ones the canary."""
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

        from export import export_model  # heavy (torch): only the publish path needs it

        with tempfile.TemporaryDirectory(prefix="repo-manager-stage-") as tmp:
            staged = Path(tmp) / model
            self.progress(f"exporting {weights} as {model} version {version}")
            result = export_model(
                weights, staged, model_name=model, version=version, options=export_options
            )
            self.repository.check_compatible(model, result.config)
            with self._locked(model):
                return self._add_and_load(model, version, staged, state, weight)

    def _add_and_load(
        self, model: str, version: str, staged: Path, state: RolloutState | None, weight: int
    ) -> RolloutState:
        # Re-read under the lock: another manager may have moved since the checks.
        if self.state(model) != state:
            raise IllegalTransitionError(f"{model} changed while exporting; publish again")
        self.repository.require_new_version(model, version)
        if state is None:
            # A new model's on-disk config names its only version from the start.
            config_path = staged / "config.pbtxt"
            staged_config = parse_config(config_path.read_bytes(), source=str(config_path))
            config_path.write_bytes(render_config(with_version_policy(staged_config, [version])))
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
        created = self.repository.add_version(model, version, staged, progress=self.progress)
        try:
            self._apply(new)
        except RepoManagerError:
            self._undo_publish(model, version, state, created=created)
            raise
        action = "publish stable" if state is None else f"publish canary at {weight}%"
        return self._record(state, new, action=action)

    def _undo_publish(
        self, model: str, version: str, state: RolloutState | None, *, created: bool
    ) -> None:
        """Triton refused the new version: put servers and files back as they were."""
        self.progress(f"Triton refused {model} version {version}; restoring")
        try:
            if state is None:
                self.fleet.unload(model)
            else:
                self._apply(state, gone=[version])
        except TritonError as exc:
            self.progress(f"restore on Triton failed ({exc}); run reconcile")
        finally:
            self.repository.remove_version(model, version, created_model=created)

    # -- traffic ----------------------------------------------------------------------------

    def set_weight(self, model: str, percent: str | int) -> RolloutState:
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
            return self._record(state, new, action=f"set-weight {weight}%")

    def promote(self, model: str) -> RolloutState:
        """Canary becomes stable at 100%; the old stable is drained, then unloaded."""
        model = validate_model_name(model)
        with self._locked(model):
            state = self._require_state(model, action="promote")
            check_transition(state.phase, Phase.PROMOTING, action="promote")
            assert state.canary is not None
            self.fleet.check_reachable()
            promoting = RolloutState(
                model=model,
                phase=Phase.PROMOTING,
                stable=state.canary,
                retiring=state.stable,
                weights={state.canary: 100},
                policy=state.policy,
            )
            promoting = self._record(state, promoting, action="promote")
            return self._finish_retirement(promoting, Phase.SUCCEEDED, action="promoted")

    def rollback(self, model: str) -> RolloutState:
        """Stable back to 100%; the canary is drained, then unloaded."""
        model = validate_model_name(model)
        with self._locked(model):
            state = self._require_state(model, action="roll back")
            check_transition(state.phase, Phase.ROLLING_BACK, action="roll back")
            assert state.canary is not None and state.stable is not None
            self.fleet.check_reachable()
            rolling = RolloutState(
                model=model,
                phase=Phase.ROLLING_BACK,
                stable=state.stable,
                retiring=state.canary,
                weights={state.stable: 100},
                policy=state.policy,
            )
            rolling = self._record(state, rolling, action="rollback")
            return self._finish_retirement(rolling, Phase.ROLLED_BACK, action="rolled back")

    def _finish_retirement(self, state: RolloutState, final: Phase, *, action: str) -> RolloutState:
        retiring = state.retiring
        assert retiring is not None
        self._drain()
        done = RolloutState(
            model=state.model,
            phase=final,
            stable=state.stable,
            weights=dict(state.weights),
            policy=state.policy,
        )
        gone = [] if retiring in self.desired_versions(done) else [retiring]
        self._apply(done, gone=gone)
        return self._record(state, done, action=action, reason=f"unloaded {retiring}")

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
            )
            before = set(self.desired_versions(state))
            after = set(self.desired_versions(new))
            self._apply(new, gone=sorted(before - after, key=int))
            # The policy changes no phase: recorded without consulting the phase table.
            return self._record(state, new, action=f"policy {policy}", check=False)

    # -- reconcile --------------------------------------------------------------------------

    def models(self) -> list[str]:
        return [m for m in self.repository.models() if self.state(m) is not None]

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
                    survey = self.fleet.survey(name)
                    report.unreachable = [s.url for s in survey if s.error]
                    # Only servers that lack the desired versions are touched: a load call
                    # makes Triton 2.51 reload every listed version (see DESIGN.md).
                    stale = [s.url for s in survey if not s.error and s.ready != desired]
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
        survey = self.fleet.survey(model)
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
            "generation": state.generation,
            "policy": state.policy,
            "servers": [
                {
                    "url": s.url,
                    "error": s.error,
                    "versions": [{"version": v.version, "state": v.state} for v in s.versions],
                }
                for s in survey
            ],
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
