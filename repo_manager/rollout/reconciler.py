"""``reconcile`` of one model: make the servers hold what its state says, again.

After a Triton restart only the on-disk config counts, after a killed manager a move may
be half done: the pass undoes a publish the journal names, finishes a transient phase, and
loads what a server lacks, each version checked first (``IntegrityGuard``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from repo_manager.names import versions_model_name
from repo_manager.phases import Phase
from repo_manager.rollout.applier import desired_route
from repo_manager.rollout.integrity_guard import IntegrityGuard
from repo_manager.rollout.publishing import Publisher
from repo_manager.rollout.retirement import Retirement

__all__ = ["ReconcileReport", "Reconciler"]


@dataclass(kw_only=True)
class ReconcileReport:
    """What ``reconcile`` did for one model."""

    model: str
    desired: list[str]
    actions: list[str] = field(default_factory=list)
    #: Servers that could not be reached (reported, not fatal: the others are reconciled).
    unreachable: list[str] = field(default_factory=list)
    #: Why the model was not reconciled: what of it is not what was published (the guard).
    refused: str | None = None


class Reconciler:
    """Reconciles one model at a time; the caller holds its lock."""

    def __init__(self, publisher: Publisher, retirement: Retirement, guard: IntegrityGuard) -> None:
        self.publisher = publisher
        self.retirement = retirement
        self.guard = guard
        self.applier = publisher.applier
        self.ledger = publisher.ledger

    def reconcile_one(self, name: str) -> ReconcileReport:
        undone = self.publisher.settle(name)
        state = self.ledger.load(name)
        if state is None and undone is not None:
            return ReconcileReport(model=name, desired=[], actions=[undone])
        state = self.guard.check(self.ledger.require(name, action="reconcile"))
        report = ReconcileReport(model=name, desired=self.applier.desired_versions(state))
        if undone is not None:
            report.actions.append(undone)
        if state.phase is Phase.PROMOTING:
            self.retirement.finish(state, Phase.SUCCEEDED, action="promoted (reconcile)")
            report.actions.append("finished promote")
        elif state.phase is Phase.ROLLING_BACK:
            self.retirement.finish(state, Phase.ROLLED_BACK, action="rolled back (reconcile)")
            report.actions.append("finished rollback")
        else:
            survey = self.applier.fleet.survey(versions_model_name(name), alias=name)
            report.unreachable = [s.url for s in survey if s.error]
            # Only servers that lack their desired versions (a canary limited to some
            # servers: only there), or whose public name routes otherwise, are touched.
            stale = [
                s.url
                for s in survey
                if not s.error
                and (
                    s.ready != {v for v in report.desired if state.may_hold(v, s.url)}
                    or s.public != desired_route(state, s.url)
                )
            ]
            if stale:
                self.applier.apply(state, gone=[], only=stale)
                report.actions.append(f"loaded {','.join(report.desired)} on {', '.join(stale)}")
            if report.unreachable:
                report.actions.append(f"unreachable: {', '.join(report.unreachable)}")
        return report
