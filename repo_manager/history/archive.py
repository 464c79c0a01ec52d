"""The bounded history of the state document, and the archive object beside it.

Routers read the state document (``.repo-manager.<model>.json``) whenever it changes, so
it keeps only the newest ``HISTORY_LIMIT`` entries; older ones move, oldest first, into
``.repo-manager.<model>.history.jsonl`` (one entry per line), through the same Storage
interface (a folder or S3), staged then renamed like every write.

The state's ``archived`` count says how many of the archive's first lines are archived
entries. The archive is written first and the state second: a manager killed in between
leaves lines past that count, which readers ignore (those entries are still in the
state) and the next write replaces.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from repo_manager.errors import InvalidInputError, StorageError
from repo_manager.state import Transition, load_state
from repo_manager.storage import Storage

__all__ = [
    "HISTORY_LIMIT",
    "archive_key",
    "archive_overflow",
    "entry_document",
    "read_history",
    "recorded_by",
]

#: Entries the state document keeps (the newest); the rest are in the archive.
HISTORY_LIMIT = 1000


def archive_key(model: str) -> str:
    """The storage key of a model's history archive (a root file: Triton ignores it)."""
    return f".repo-manager.{model}.history.jsonl"


def recorded_by() -> str:
    """``user@host`` of this process, written into every history entry."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _archived_lines(storage: Storage, model: str, count: int) -> list[bytes]:
    """The archive's first ``count`` lines (the archived entries)."""
    if count == 0:
        return []
    data = storage.read_bytes(archive_key(model))
    lines = [] if data is None else data.splitlines()
    if len(lines) < count:
        raise StorageError(
            f"history archive {storage.location}/{archive_key(model)} holds {len(lines)} "
            f"entries, the state says {count}"
        )
    return lines[:count]


def archive_overflow(
    storage: Storage, model: str, history: Sequence[Transition], archived: int, limit: int
) -> tuple[list[Transition], int]:
    """Keep the newest ``limit`` entries of ``history``; append the older ones to the
    archive (after its first ``archived`` lines). Returns what the state keeps and its new
    ``archived`` count; the caller writes the state afterwards."""
    if limit < 1:
        raise ValueError(f"history limit {limit} < 1")
    overflow = len(history) - limit
    if overflow <= 0:
        return list(history), archived
    lines = _archived_lines(storage, model, archived)
    lines += [json.dumps(asdict(t), sort_keys=True).encode() for t in history[:overflow]]
    storage.write_bytes_atomic(archive_key(model), b"\n".join(lines) + b"\n")
    return list(history[overflow:]), archived + overflow


def read_history(storage: Storage, model: str, *, limit: int | None = None) -> list[Transition]:
    """Every recorded entry of ``model``, oldest first (``limit``: the newest that many),
    from the archive and the state; the archive is read only when needed."""
    state = load_state(storage, model)
    if state is None:
        raise InvalidInputError(f"{model} was never published to {storage.location}")
    if limit is not None and limit <= len(state.history):
        return state.history[len(state.history) - limit :]
    older: list[Transition] = []
    for number, line in enumerate(_archived_lines(storage, model, state.archived), 1):
        try:
            older.append(Transition.from_document(json.loads(line)))
        except (ValueError, TypeError) as exc:
            raise StorageError(
                f"corrupt history archive {storage.location}/{archive_key(model)} "
                f"line {number}: {exc}"
            ) from exc
    entries = older + state.history
    return entries if limit is None else entries[len(entries) - limit :]


def entry_document(entry: Transition) -> dict[str, Any]:
    """One entry as ``history --json`` prints it (phases as ``from``/``to``, like the
    ``last_transition`` of ``status --json``)."""
    return {
        "at": entry.at,
        "action": entry.action,
        "kind": entry.kind,
        "from": entry.from_phase,
        "to": entry.to_phase,
        "stable": entry.stable,
        "canary": entry.canary,
        "weights": entry.weights,
        "cohort": entry.cohort,
        "public": entry.public,
        "who": entry.who,
        "reason": entry.reason,
        "details": entry.details,
        "servers": entry.servers,
    }
