"""Canary rollouts inside Triton, one job per module (``RolloutManager`` is the front).

- ``settings``: rollout timing, the analysis plan, the version policy; string parsers
- ``ledger``: the persisted state per model: lock, load, record one decision
- ``applier``: make the servers hold the desired versions, the public name on stable
- ``publishing``: checks and publish of an already exported, staged version
- ``analysis_status`` / ``analysis_step``: the progressive analysis, one step at a time
- ``status``: the status document
- ``manager``: ``RolloutManager``: publish, set-weight, promote, rollback, policy, reconcile
"""

from __future__ import annotations

from repo_manager.rollout.analysis_status import AnalysisStatus
from repo_manager.rollout.manager import ReconcileReport, RolloutManager
from repo_manager.rollout.publishing import PublishRequest, read_staged, resolve_weights
from repo_manager.rollout.settings import (
    AnalysisPlan,
    RolloutSettings,
    VersionPolicy,
    check_weight,
    parse_policy,
    parse_steps,
    parse_weight,
)
from repo_manager.rollout.status import status_document

__all__ = [
    "AnalysisPlan",
    "AnalysisStatus",
    "PublishRequest",
    "ReconcileReport",
    "RolloutManager",
    "RolloutSettings",
    "VersionPolicy",
    "check_weight",
    "parse_policy",
    "parse_steps",
    "parse_weight",
    "read_staged",
    "resolve_weights",
    "status_document",
]
