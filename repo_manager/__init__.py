"""repo-manager: canary rollouts of YOLOv8 detectors inside one Triton Inference Server.

The package root exports the client side (``Router``) and the error tree only, and imports
nothing heavy: a gRPC client that routes requests must not pull torch, Ultralytics, onnx or
the ``export`` package.
"""

from __future__ import annotations

from repo_manager.errors import (
    BucketNotFoundError,
    ExportError,
    FleetResolutionError,
    GateFailedError,
    GoldenSetError,
    IllegalTransitionError,
    IncompatibleModelError,
    InvalidGateError,
    InvalidInputError,
    InvalidNameError,
    InvalidVersionError,
    InvalidWeightError,
    MetricsUnavailableError,
    RepoManagerError,
    RoutingError,
    StorageAccessError,
    StorageError,
    StorageUnavailableError,
    TritonError,
    TritonUnavailableError,
    VersionExistsError,
    VersionNotReadyError,
    WeightsError,
)
from repo_manager.routing import Detections, RoutedResult, Router
from repo_manager.transport import GrpcSecurity

__version__ = "0.1.0"

__all__ = [
    "BucketNotFoundError",
    "Detections",
    "ExportError",
    "FleetResolutionError",
    "GateFailedError",
    "GoldenSetError",
    "GrpcSecurity",
    "IllegalTransitionError",
    "IncompatibleModelError",
    "InvalidGateError",
    "InvalidInputError",
    "InvalidNameError",
    "InvalidVersionError",
    "InvalidWeightError",
    "MetricsUnavailableError",
    "RepoManagerError",
    "RoutedResult",
    "Router",
    "RoutingError",
    "StorageAccessError",
    "StorageError",
    "StorageUnavailableError",
    "TritonError",
    "TritonUnavailableError",
    "VersionExistsError",
    "VersionNotReadyError",
    "WeightsError",
    "__version__",
]
