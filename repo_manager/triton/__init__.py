"""Model control on one or many Triton servers, over tritonclient's gRPC client.

tritonclient errors are translated where they enter (``control``): an unreachable server
becomes ``TritonUnavailableError`` (one that takes the call and never answers,
``TritonHungError``), anything Triton refuses becomes ``TritonError``, both chained.
"""

from __future__ import annotations

from repo_manager.triton.control import ServerVersions, TritonControl, VersionState
from repo_manager.triton.fleet import TritonFleet

__all__ = ["ServerVersions", "TritonControl", "TritonFleet", "VersionState"]
