"""Where a progressive analysis stands, as one typed value persisted in the rollout state.

The state document keeps it as JSON (``RolloutState.analysis``) in the shape it has always
had, so state files written before this type existed still load, and any process can take
the next step from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from repo_manager.analysis import Snapshot, Verdict, snapshot_from_json, snapshot_to_json
from repo_manager.errors import InvalidGateError, StorageError
from repo_manager.rollout.settings import AnalysisPlan

__all__ = ["AnalysisStatus"]


@dataclass(kw_only=True, frozen=True)
class AnalysisStatus:
    """An analysis in charge of a canary: its plan and what its steps have seen so far."""

    plan: AnalysisPlan
    #: Index in ``plan.steps`` of the weight the canary is at (past the end: all passed).
    step: int = 0
    failed_checks: int = 0
    #: Consecutive steps whose metrics source could not be read.
    metrics_errors: int = 0
    #: Cumulative counters at the previous step (None before the first reading).
    snapshot: Snapshot | None = None
    last: Verdict | None = None
    #: Unix time the analysis started, and of its last reading (taken or failed; None
    #: before the first): when the next step is due (``due``).
    since: float | None = None
    read_at: float | None = None
    #: The detection counters of the readings inside the detection window, oldest first,
    #: each with its unix time (``detection_gates.window_readings``).
    window: tuple[tuple[float, Snapshot], ...] = ()
    #: The weight of ``plan.approve_before`` the canary waits at the step before to reach
    #: (None: not waiting), and the weights a person approved.
    waiting: int | None = None
    approved: tuple[int, ...] = ()
    #: Who paused the analysis (``pause``): it keeps judging, and moves on at ``resume``.
    paused_by: str | None = None

    @property
    def held(self) -> str | None:
        """Why a passed step does not move the canary on (None: it does)."""
        if self.paused_by is not None:
            return f"paused by {self.paused_by}"
        if self.waiting is not None:
            return f"waiting for approval of {self.waiting}%"
        return None

    def due(self, now: float, *, patience: float = 1.0) -> bool:
        """Whether a step may be taken at unix time ``now``: a whole interval (times
        ``patience``) after the last reading, or after the start before any. A process
        that is not the analysis' driver waits ``patience`` intervals, so it never judges
        a short interval beside a driver that is alive."""
        last = self.read_at if self.read_at is not None else self.since
        return last is None or now - last >= self.plan.interval_s * patience

    def to_json(self, *, snapshot: bool = True) -> dict[str, Any]:
        """The state document's ``analysis`` (``snapshot=False``: as ``status`` shows it)."""
        document: dict[str, Any] = {
            "plan": self.plan.to_dict(),
            "step": self.step,
            "failed_checks": self.failed_checks,
            "metrics_errors": self.metrics_errors,
            "snapshot": None if self.snapshot is None else snapshot_to_json(self.snapshot),
            "last": None if self.last is None else self.last.to_dict(),
        }
        for name in ("since", "read_at", "waiting", "paused_by"):
            if getattr(self, name) is not None:
                document[name] = getattr(self, name)
        if self.approved:
            document["approved"] = list(self.approved)
        if snapshot and self.window:
            document["window"] = [[at, snapshot_to_json(kept)] for at, kept in self.window]
        if not snapshot:
            del document["snapshot"]
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> AnalysisStatus:
        try:
            before = document.get("snapshot")
            last = document.get("last")
            return cls(
                plan=AnalysisPlan.from_dict(document["plan"]),
                step=int(document.get("step", 0)),
                failed_checks=int(document.get("failed_checks", 0)),
                metrics_errors=int(document.get("metrics_errors", 0)),
                snapshot=None if before is None else snapshot_from_json(before),
                last=None if last is None else Verdict.from_dict(last),
                since=_time(document.get("since")),
                waiting=None if document.get("waiting") is None else int(document["waiting"]),
                approved=tuple(int(w) for w in document.get("approved", [])),
                paused_by=document.get("paused_by"),
                read_at=_time(document.get("read_at")),
                window=tuple(
                    (float(at), snapshot_from_json(kept)) for at, kept in document.get("window", [])
                ),
            )
        except (KeyError, TypeError, ValueError, InvalidGateError) as exc:
            raise StorageError(f"corrupt analysis in the rollout state: {exc}") from exc


def _time(value: Any) -> float | None:
    return None if value is None else float(value)
