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
from repo_manager.unpinned import WEIGHTED, check_weighted_classes

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


def note_published_after(version_dir: Path, stable: str | None) -> None:
    """Record in the staged manifest the version this one is published after (the stable
    it is a canary of; None for a model's first version): the lineage a review reads
    beside the checkpoint's own (``lineage``). The manifest hashes every other file, not
    itself, so the version stays checkable."""
    path = version_dir / MANIFEST_FILE
    manifest = json.loads(path.read_bytes())
    manifest["published_after"] = stable
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@dataclass(kw_only=True, frozen=True)
class PublishRequest:
    """A publish that passed the checks that need no export, and the state they saw."""

    model: str
    version: str
    #: The new canary's weight (unused for a model's first version: stable at 100%).
    weight: int
    state: RolloutState | None
    #: The canary in progress that this publish replaces ("canary 8 at 30%"), if any.
    replaces: str | None = None
    #: The only servers that load the canary (None: every server).
    servers: tuple[str, ...] | None = None


def replaced_canary(state: RolloutState | None, version: str, *, replace: bool) -> str | None:
    """The canary in progress a publish would replace; refused unless ``replace``."""
    if state is None or state.canary is None or state.phase not in REPLACEABLE:
        return None
    shown = f"canary {state.canary} at {state.weights.get(state.canary, 0)}%"
    if not replace:
        raise IllegalTransitionError(
            f"cannot publish {version}: {state.model} has {shown} in progress; promote or "
            "roll it back first, or publish with --replace to replace it"
        )
    return shown


#: Phases whose canary a new publish replaces (only with ``replace``).
REPLACEABLE = frozenset({Phase.PROGRESSING, Phase.ANALYZING})


def recorded(state: RolloutState | None, version: str) -> bool:
    """True when a recorded decision names ``version`` (its publish was recorded)."""
    return state is not None and any(version in (t.stable, t.canary) for t in state.history)


class Publisher:
    """Adds versions to one repository and loads them on the fleet.

    A publish journals itself (``Ledger.begin_publish``) before its version reaches the
    repository and clears the journal once its decision is recorded or it is undone. One
    that fails or is interrupted (Ctrl-C, SIGTERM: the CLI turns both into
    KeyboardInterrupt) undoes itself; one whose manager was killed is undone by ``settle``
    (``reconcile``, or the next publish of the model). Undone, not finished: a version
    that no decision names never got traffic, and finishing it would skip what the user
    asked to come after the load (a golden gate before any traffic, an analysis).
    """

    def __init__(self, applier: FleetApplier, ledger: Ledger) -> None:
        self.applier = applier
        self.ledger = ledger
        self.repository = applier.repository
        self.fleet = applier.fleet
        self.progress = applier.progress

    def check(
        self,
        model: str,
        version: str,
        *,
        canary_weight: int | None,
        replace: bool = False,
        servers: tuple[str, ...] | None = None,
    ) -> PublishRequest:
        """Everything that can refuse a publish before an export: names, weight, a new
        version number, the phase, a canary in progress, and servers that answer. A publish
        a killed manager left half done is undone first."""
        model = validate_model_name(model)
        version = validate_version(version)
        settings = self.applier.settings
        weight = check_weight(settings.canary_weight if canary_weight is None else canary_weight)
        if self.ledger.pending_publish(model) is not None:
            with self.ledger.locked(model):
                self.settle(model)
        self.repository.require_new_version(model, version)
        state = self.ledger.load(model)
        target = Phase.INITIALIZED if state is None else Phase.PROGRESSING
        check_transition(state.phase if state else None, target, action=f"publish {version}")
        replaces = replaced_canary(state, version, replace=replace)
        if servers is not None and state is None:
            raise InvalidInputError(
                f"cannot publish {version} with --servers: the first version of {model} "
                "becomes stable, which every server serves"
            )
        unknown = [] if servers is None else sorted(set(servers) - set(self.fleet.urls))
        if unknown:
            raise InvalidInputError(f"servers {', '.join(unknown)} are not in the fleet")
        self.fleet.check_reachable()
        return PublishRequest(
            model=model,
            version=version,
            weight=weight,
            state=state,
            replaces=replaces,
            servers=servers,
        )

    def publish(
        self,
        model: str,
        version: str,
        *,
        staged: Path,
        canary_weight: int | None,
        force: bool,
        timer: PhaseTimer,
        replace: bool = False,
        servers: tuple[str, ...] | None = None,
    ) -> RolloutState:
        """Check the staged folder (backend, IO, TensorRT release), then add and load it."""
        request = self.check(
            model, version, canary_weight=canary_weight, replace=replace, servers=servers
        )
        config, manifest = read_staged(staged, request.model, request.version)
        self.repository.check_compatible(request.model, config)
        state = request.state
        if state is not None and state.unpinned == WEIGHTED and state.stable is not None:
            names = manifest.get("class_names")
            check_weighted_classes(
                request.model,
                (state.stable, self.repository.class_names(request.model, state.stable)),
                (request.version, tuple(names) if isinstance(names, list) else None),
            )
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
            new = with_canary_at(
                state,
                request.weight,
                phase=Phase.PROGRESSING,
                canary=version,
                servers=request.servers,
            )
        note_published_after(staged / version, None if state is None else state.stable)
        previous_config = None if state is None else self.repository.require_config(model)
        creating = not self.repository.has_versions_model(model)
        self.ledger.begin_publish(model, version, created_model=creating)
        try:
            with timer.phase("upload"):
                self.repository.add_version(
                    model, version, staged, progress=self.progress, alias=alias
                )
            if previous_config is not None:
                self._map_new_gpu_kinds(model, previous_config, staged_config)
            # Triton runs the config's model_warmup inside the load call: one phase.
            with timer.phase("load + warm-up"):
                self.applier.apply(new)
            with timer.phase("routing table"):
                done = self.ledger.record(
                    state,
                    new,
                    action=_action(request),
                    reason=_reason(request, timer),
                    public=new.stable,
                )
        except BaseException as exc:
            outcome = self._undo_unless_recorded(model, version, state, creating, previous_config)
            if isinstance(exc, RepoManagerError) and outcome is not None:
                raise type(exc)(f"{exc}; {outcome}") from exc
            # An interrupt carries how its undo went to the one line the CLI prints: an
            # undo that did not finish once went unsaid and the line claimed nothing was
            # kept, while the version's files stayed for reconcile.
            exc.add_note(outcome or f"version {version} was recorded before the interrupt")
            raise
        self.ledger.end_publish(model)
        return done

    def settle(self, model: str) -> str | None:
        """Undo the publish of ``model`` that a killed manager left journaled (the caller
        holds the lock, so its publisher is gone); returns what was done, None if nothing
        was pending or its decision had been recorded."""
        pending = self.ledger.pending_publish(model)
        if pending is None:
            return None
        state = self.ledger.load(model)
        if recorded(state, pending.version):
            self.ledger.end_publish(model)
            return None
        created = pending.created_model and state is None
        try:
            undone = self._undo(
                model, pending.version, state, created=created, previous_config=None
            )
        except RepoManagerError as exc:
            raise type(exc)(
                f"the interrupted publish of {model} version {pending.version} is not undone "
                f"yet: {exc}"
            ) from exc
        return f"undid the interrupted publish of version {pending.version}: {undone}"

    def _map_new_gpu_kinds(self, model: str, current: ModelConfig, candidate: ModelConfig) -> None:
        """A version with plans for more GPU kinds extends the model's ``cc_model_filenames``."""
        merged = merge_cc_model_filenames(current, dict(candidate.cc_model_filenames))
        if merged != current:
            self.repository.write_config(model, merged)

    def _undo_unless_recorded(
        self,
        model: str,
        version: str,
        state: RolloutState | None,
        created: bool,
        previous_config: ModelConfig | None,
    ) -> str | None:
        """Undo a publish that failed or was interrupted before its decision was recorded;
        says how that went (None when it was recorded: the publish stands)."""
        if recorded(self.ledger.load(model), version):
            self.ledger.end_publish(model)
            return None
        try:
            undone = self._undo(
                model, version, state, created=created, previous_config=previous_config
            )
        except RepoManagerError as exc:
            self.progress(f"undo not finished: {exc}")
            return f"publish not undone yet ({exc}); run reconcile"
        except KeyboardInterrupt:
            return "publish not undone yet (its undo was interrupted too); run reconcile"
        return f"publish undone: {undone}"

    def _undo(
        self,
        model: str,
        version: str,
        state: RolloutState | None,
        *,
        created: bool,
        previous_config: ModelConfig | None,
    ) -> str:
        """Put servers and files back as they were before ``version`` was added.

        The servers first, within the deadline of a load: Triton finishes a load in flight
        before it unloads, and that load may take as long as any load may (a TensorRT plan
        of a large detector: tens of seconds; a fixed 30 s here was shorter than the load's
        own deadline). A version's files must not go while Triton may be loading them (a
        python stub starting on a vanished model.py hangs the model until Triton restarts).
        Then the files, then the journal. Raises (the journal kept, so that ``reconcile``
        tries again) when Triton does not let go in time; a second interrupt leaves the
        rest to ``reconcile`` as well.
        """
        self.progress(
            f"undoing the publish of {model} version {version} (Triton first finishes a load "
            "in flight; interrupt again to leave the undo to reconcile)"
        )
        if previous_config is not None:
            self.repository.write_config(model, previous_config)
        timeout = self.applier.settings.ready_timeout
        if state is None:
            self.fleet.unload(model, versions_model_name(model), timeout=timeout)
        else:
            self.applier.apply(state, gone=[version], timeout=timeout)
        self.repository.remove_version(model, version, created_model=created)
        self.ledger.end_publish(model)
        return f"version {version} unloaded and removed from {self.repository.location}"


def _action(request: PublishRequest) -> str:
    if request.state is None:
        return "publish stable"
    return f"publish canary at {request.weight}%"


def _reason(request: PublishRequest, timer: PhaseTimer) -> str:
    replaced = f"replaced {request.replaces}; " if request.replaces else ""
    return f"{replaced}timings: {timer.summary()}"
