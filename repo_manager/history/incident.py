"""A post-mortem of every automatic rollback (an analysis or a guard rolled a canary back).

Written beside the state once the rollback is recorded (``incident_key``; its plot at
``incident_plot_key`` when the plot extra is installed), and shown by ``history MODEL
--incident``: why it was rolled back, every verdict on that canary since it was published
(gates and per-version readings of each step: the window the decision was made on), what
each server held right after, and the last lines of Triton's log that name the canary, when
the manager can read that log (``REPO_MANAGER_TRITON_LOG``: the file ``serve`` writes, or a
mounted one).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from repo_manager.errors import InvalidInputError, RepoManagerError
from repo_manager.names import versions_model_name
from repo_manager.state import RolloutState, Transition
from repo_manager.storage import Storage

__all__ = [
    "TRITON_LOG_ENV",
    "incident_document",
    "incident_key",
    "incident_plot_key",
    "incident_text",
    "read_incident",
    "write_incident",
]

logger = logging.getLogger(__name__)

TRITON_LOG_ENV = "REPO_MANAGER_TRITON_LOG"
#: Lines of Triton's log kept (the newest that name the canary), and how much of the
#: log's end is read to find them.
LOG_LINES = 20
_LOG_TAIL_BYTES = 1 << 20


def incident_key(model: str) -> str:
    """The storage key of a model's last post-mortem (no model's own key ends so)."""
    return f".repo-manager.{model}.incident"


def incident_plot_key(model: str) -> str:
    return f".repo-manager.{model}.incident.png"


def _canary_entries(history: Sequence[Transition]) -> tuple[str | None, list[Transition]]:
    """The canary the last rollback took out, and the entries from its publish on."""
    last = max(i for i, t in enumerate(history) if t.action == "rollback")
    canary = next((t.canary for t in reversed(history[:last]) if t.canary), None)
    start = next(
        (i for i in range(last, -1, -1) if history[i].action.startswith("publish canary")),
        0,
    )
    return canary, list(history[start:])


def _verdict(entry: Transition) -> dict[str, Any]:
    analysis = (entry.details or {}).get("analysis", {})
    return {
        "at": entry.at,
        "action": entry.action,
        "reason": entry.reason,
        "weight": analysis.get("weight"),
        "outcome": analysis.get("outcome"),
        "gates": analysis.get("gates", []),
        "readings": analysis.get("readings", {}),
        "servers": analysis.get("servers", {}),
    }


def triton_log_lines(path: Path, model: str, version: str, *, limit: int = LOG_LINES) -> list[str]:
    """The newest ``limit`` lines of Triton's log that name the canary (its versions model,
    with its version where the line has one)."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
            text = log.read().decode("utf-8", "replace")
    except OSError:
        return []
    name = versions_model_name(model)
    named = [line for line in text.splitlines() if name in line]
    exact = [line for line in named if f"{name}:{version}" in line or f"version {version}" in line]
    return (exact or named)[-limit:]


def incident_document(
    state: RolloutState, *, servers: list[dict[str, Any]], log_lines: list[str]
) -> dict[str, Any]:
    """The post-mortem of ``state``'s last rollback."""
    canary, entries = _canary_entries(state.history)
    rollback = next(t for t in reversed(state.history) if t.action == "rollback")
    return {
        "model": state.model,
        "canary": canary,
        "stable": state.stable,
        "rolled_back_at": rollback.at,
        "reason": rollback.reason,
        "who": rollback.who,
        "verdicts": [_verdict(t) for t in entries if t.action.startswith(("analysis", "guard"))],
        "transitions": [t.action for t in entries],
        "servers": servers,
        "triton_log": log_lines,
    }


def write_incident(
    storage: Storage, state: RolloutState, *, servers: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """Write the post-mortem (and its plot) beside the state; best effort: the rollback
    stands whatever happens here, a failure is one log line."""
    try:
        canary, entries = _canary_entries(state.history)
        log = os.environ.get(TRITON_LOG_ENV)
        lines = triton_log_lines(Path(log), state.model, canary or "") if log else []
        document = incident_document(state, servers=servers, log_lines=lines)
        document["plot"] = _write_plot(storage, state.model, entries)
        storage.write_bytes_atomic(
            incident_key(state.model), json.dumps(document, indent=1).encode()
        )
        return document
    except (RepoManagerError, OSError, ValueError, StopIteration) as exc:
        logger.warning("post-mortem of %s not written: %s", state.model, exc)
        return None


def _write_plot(storage: Storage, model: str, entries: list[Transition]) -> str | None:
    """Where the incident's plot was written (None: the plot extra is not installed)."""
    from repo_manager.history.plot import plot_png

    try:
        png = plot_png(entries, model=model)
    except InvalidInputError:  # the plot extra (matplotlib) is not installed
        return None
    storage.write_bytes_atomic(incident_plot_key(model), png)
    return f"{storage.location}/{incident_plot_key(model)}"


def read_incident(storage: Storage, model: str) -> dict[str, Any] | None:
    data = storage.read_bytes(incident_key(model))
    return None if data is None else dict(json.loads(data))


def incident_text(document: dict[str, Any]) -> str:
    """``history MODEL --incident``."""
    lines = [
        f"{document['model']}: canary {document['canary']} rolled back at "
        f"{document['rolled_back_at']} by {document['who']}",
        f"  why: {document['reason']}",
        "  verdicts on the canary (oldest first):",
    ]
    for v in document["verdicts"]:
        lines.append(f"    {v['at']}  {v['action']}")
        for g in v["gates"]:
            shown = "n/a" if g["value"] is None else f"{g['value']:.4g}"
            mark = "ok" if g["passed"] else "FAILED"
            lines.append(f"      {g['name']}: {shown} (bound {g['bound']:g}) {mark}")
        for source, roles in v["readings"].items():
            for role, r in roles.items():
                figures = ", ".join(
                    f"{k} {r[k]:.4g}"
                    for k in ("requests", "error_rate", "latency_ms", "boxes_per_image")
                    if r.get(k) is not None
                )
                lines.append(f"      {source} {role} v{r['version']}: {figures}")
        for device, figures in v.get("servers", {}).items():
            shown = ", ".join(f"{k} {value:.4g}" for k, value in figures.items())
            lines.append(f"      memory {device}: {shown}")
    lines.append("  servers right after:")
    for s in document["servers"]:
        held = ", ".join(f"v{v['version']} {v['state']}" for v in s["versions"])
        lines.append(f"    {s['url']}: {s['error'] or held or 'nothing loaded'}")
    if document["triton_log"]:
        lines.append("  Triton's log, last lines naming the canary:")
        lines += [f"    {line}" for line in document["triton_log"]]
    if document.get("plot"):
        lines.append(f"  plot: {document['plot']}")
    return "\n".join(lines)
