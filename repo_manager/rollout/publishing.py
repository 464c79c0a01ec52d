"""Publish a version that the caller already exported: checks, stage, load, routing table.

The manager never exports (``export`` pulls torch and Ultralytics, and the house rule is
that nothing below the CLI imports it): the caller writes a staged folder, ``config.pbtxt``
plus ``<version>/`` with its ``manifest.json``, and this module checks it against the
repository and the servers before anything reaches either. The first version of a model
becomes stable at 100%; later ones the canary at its weight.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repo_manager.compat import check_plan_compatible
from repo_manager.errors import (
    IllegalTransitionError,
    InvalidInputError,
    RepoManagerError,
    TritonError,
    WeightsError,
)
from repo_manager.modelconfig import (
    ModelConfig,
    merge_cc_model_filenames,
    parse_config,
    render_config,
    with_version_policy,
)
from repo_manager.names import (
    CONFIG_FILE,
    MANIFEST_FILE,
    validate_model_name,
    validate_version,
    versions_model_name,
)
from repo_manager.phases import Phase, check_transition
from repo_manager.rollout.applier import FleetApplier, alias_config
from repo_manager.rollout.ledger import Ledger, with_canary_at
from repo_manager.rollout.settings import check_weight
from repo_manager.state import RolloutState
from repo_manager.timing import PhaseTimer

__all__ = ["PublishRequest", "Publisher", "read_staged", "resolve_weights"]


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


def read_staged(staged: Path, model: str, version: str) -> tuple[ModelConfig, dict[str, Any]]:
    """The staged folder's config and the version's manifest (what the checks read)."""
    config_path, manifest_path = staged / CONFIG_FILE, staged / version / MANIFEST_FILE
    if not config_path.is_file() or not manifest_path.is_file():
        raise InvalidInputError(
            f"{staged} is not a staged version {version} "
            f"(expected {CONFIG_FILE} and {version}/{MANIFEST_FILE})"
        )
    config = parse_config(config_path.read_bytes(), source=str(config_path))
    if config.name != model:
        raise InvalidInputError(f"{staged} holds a config of {config.name!r}, not {model!r}")
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except ValueError as exc:
        raise InvalidInputError(f"{manifest_path} is not JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise InvalidInputError(f"{manifest_path} is not a manifest (a JSON object)")
    return config, manifest


@dataclass(kw_only=True, frozen=True)
class PublishRequest:
    """A publish that passed the checks that need no export, and the state they saw."""

    model: str
    version: str
    #: The new canary's weight (unused for a model's first version: stable at 100%).
    weight: int
    state: RolloutState | None


class Publisher:
    """Adds versions to one repository and loads them on the fleet."""

    def __init__(self, applier: FleetApplier, ledger: Ledger) -> None:
        self.applier = applier
        self.ledger = ledger
        self.repository = applier.repository
        self.fleet = applier.fleet
        self.progress = applier.progress

    def check(self, model: str, version: str, *, canary_weight: int | None) -> PublishRequest:
        """Everything that can refuse a publish before an export: names, weight, a new
        version number, the phase, and servers that answer."""
        model = validate_model_name(model)
        version = validate_version(version)
        settings = self.applier.settings
        weight = check_weight(settings.canary_weight if canary_weight is None else canary_weight)
        self.repository.require_new_version(model, version)
        state = self.ledger.load(model)
        target = Phase.INITIALIZED if state is None else Phase.PROGRESSING
        check_transition(state.phase if state else None, target, action=f"publish {version}")
        self.fleet.check_reachable()
        return PublishRequest(model=model, version=version, weight=weight, state=state)

    def publish(
        self,
        model: str,
        version: str,
        *,
        staged: Path,
        canary_weight: int | None,
        force: bool,
        timer: PhaseTimer,
    ) -> RolloutState:
        """Check the staged folder (IO, TensorRT release), then add and load it."""
        request = self.check(model, version, canary_weight=canary_weight)
        config, manifest = read_staged(staged, request.model, request.version)
        self.repository.check_compatible(request.model, config)
        check_plan_compatible(manifest, self.fleet.server_versions(), force=force)
        with self.ledger.locked(request.model):
            return self._add_and_load(request, staged, config, timer)

    def _add_and_load(
        self, request: PublishRequest, staged: Path, staged_config: ModelConfig, timer: PhaseTimer
    ) -> RolloutState:
        """Move the staged version in and load it; ``staged_config`` is its parsed config."""
        model, version, state = request.model, request.version, request.state
        # Re-read under the lock: another manager may have moved since the checks.
        if self.ledger.load(model) != state:
            raise IllegalTransitionError(f"{model} changed while publishing; publish again")
        self.repository.require_new_version(model, version)
        alias = None
        if state is None:
            # A new model's on-disk config names its only version from the start, and the
            # model it is in Triton: the versions model behind the public name.
            first = with_version_policy(staged_config, [version])
            first.name = versions_model_name(model)
            (staged / CONFIG_FILE).write_bytes(render_config(first))
            alias = alias_config(model, first, version)
            new = RolloutState(
                model=model, phase=Phase.INITIALIZED, stable=version, weights={version: 100}
            )
        else:
            new = with_canary_at(state, request.weight, phase=Phase.PROGRESSING, canary=version)
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
                self.applier.apply(new)
        except RepoManagerError:
            self._undo(model, version, state, created=created)
            if previous_config is not None:
                self.repository.write_config(model, previous_config)
            raise
        action = "publish stable" if state is None else f"publish canary at {request.weight}%"
        reason = f"timings: {timer.summary()}"
        with timer.phase("routing table"):
            return self.ledger.record(state, new, action=action, reason=reason, public=new.stable)

    def _map_new_gpu_kinds(self, model: str, current: ModelConfig, candidate: ModelConfig) -> None:
        """A version with plans for more GPU kinds extends the model's ``cc_model_filenames``."""
        merged = merge_cc_model_filenames(current, dict(candidate.cc_model_filenames))
        if merged != current:
            self.repository.write_config(model, merged)

    def _undo(self, model: str, version: str, state: RolloutState | None, *, created: bool) -> None:
        """Triton refused the new version: put servers and files back as they were."""
        self.progress(f"Triton refused {model} version {version}; restoring")
        try:
            if state is None:
                self.fleet.unload(model, versions_model_name(model))
            else:
                self.applier.apply(state, gone=[version])
        except TritonError as exc:
            self.progress(f"restore on Triton failed ({exc}); run reconcile")
        finally:
            self.repository.remove_version(model, version, created_model=created)
