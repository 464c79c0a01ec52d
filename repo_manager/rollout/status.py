"""The status document of one model (``status --json``): a pure function of what was read.

DESIGN.md fixes its core (``model``, ``stable``, ``canary``, ``weights``, ``phase``,
``versions``); the rest says which Triton names clients call, what each server holds and
answers from, the analysis in charge and the last recorded move.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from repo_manager.names import versions_model_name
from repo_manager.rollout.analysis_status import AnalysisStatus
from repo_manager.state import RolloutState

if TYPE_CHECKING:
    from repo_manager.triton import ServerVersions

__all__ = ["server_rows", "status_document"]


def server_rows(survey: Sequence[ServerVersions]) -> list[dict[str, Any]]:
    """What each server holds of a model and answers from (``status``, a post-mortem)."""
    return [
        {
            "url": s.url,
            "error": s.error,
            "public": s.public,
            "versions": [{"version": v.version, "state": v.state} for v in s.versions],
        }
        for s in survey
    ]


def status_document(
    state: RolloutState,
    survey: Sequence[ServerVersions],
    on_disk: Sequence[str],
    refused: Mapping[str, str] | None = None,
    contract: str | None = None,
) -> dict[str, Any]:
    """The status of ``state.model`` from each server's ``survey`` and the versions on disk;
    ``refused``: what of the model is not what was published ("config" or a version ->
    why), as the integrity check found it; ``contract``: what its config states
    (``repo_manager.contract``).

    Versions are listed as the first server that answers reports them (a canary limited
    to some servers: the first of those); one that does not hold a version on disk shows it
    UNLOADED (UNAVAILABLE when no server answered).
    """
    model = state.model
    first = next((s for s in survey if s.error is None), survey[0])
    reported = {v.version: v.state for v in first.versions}
    limited = state.restricted
    if limited is not None:  # a canary on some servers: as the first of those reports it
        reported.pop(limited, None)
        holders = (s for s in survey if s.error is None and state.holds_restricted(s.url))
        holder = next(holders, None)
        if holder is not None:
            reported |= {v.version: v.state for v in holder.versions if v.version == limited}
    missing = "UNAVAILABLE" if first.error else "UNLOADED"
    last = state.history[-1] if state.history else None
    analysis = None if state.analysis is None else AnalysisStatus.from_json(state.analysis)
    return {
        "model": model,
        "stable": state.stable,
        "canary": state.canary,
        "weights": state.weights,
        # The canary's cohort: {"rule", "weight"} (the weight inside it), or null.
        "cohort": state.cohort,
        "phase": state.phase.value,
        "versions": [{"version": v, "state": reported.get(v, missing)} for v in on_disk],
        "versions_model": versions_model_name(model),
        # What every version answers: "raw" [B, 4+nc, N] or "end2end" [B, K, 6].
        "contract": contract,
        # What a client that names no version gets (the public name on the first server).
        "public": {"name": model, "version": None if first.error else first.public},
        "generation": state.generation,
        "refused": dict(refused or {}),
        "policy": state.policy,
        "unpinned": state.unpinned,
        "unpinned_shadow": state.unpinned_shadow,
        "servers": server_rows(survey),
        # The only servers that hold the canary and get its traffic (None: every one).
        "canary_servers": None if state.servers is None else list(state.servers),
        # The snapshot is raw counters for the next step, no news to a reader.
        "analysis": analysis and analysis.to_json(snapshot=False),
        "last_transition": None
        if last is None
        else {
            "at": last.at,
            "action": last.action,
            "kind": last.kind,
            "from": last.from_phase,
            "to": last.to_phase,
            "reason": last.reason,
            "who": last.who,
        },
    }
