"""A model's rollout history: every recorded decision, oldest first.

archive.py  the bounded history in the state document and the archive object beside it
plot.py     the picture of a rollout (matplotlib, imported only when a plot is drawn)
"""

from __future__ import annotations

from repo_manager.history.archive import (
    HISTORY_LIMIT,
    archive_key,
    archive_overflow,
    entry_document,
    read_history,
    recorded_by,
)

__all__ = [
    "HISTORY_LIMIT",
    "archive_key",
    "archive_overflow",
    "entry_document",
    "read_history",
    "recorded_by",
]
