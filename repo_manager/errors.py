"""The one exception tree of repo-manager.

Every error the library raises on purpose is a ``RepoManagerError``; the CLI turns it into
one line on stderr and the exit code it carries (2: bad input or usage, 1: an operational
failure). Errors of the libraries we call (tritonclient, grpc, onnx, ultralytics, OS) are
translated where they enter and chained with ``from``.

    RepoManagerError
    ├── InvalidInputError                 exit 2: the request can never succeed as typed
    │   ├── InvalidNameError              model name not a safe single path segment
    │   ├── InvalidVersionError           version not a positive integer
    │   ├── InvalidWeightError            canary weight outside 0..100
    │   ├── VersionExistsError            version already in the repository
    │   ├── WeightsError                  weights missing, unreadable, or not a YOLO detector
    │   ├── BucketNotFoundError           the S3 bucket of the repository does not exist
    │   ├── IncompatibleModelError        new version's inputs/outputs differ from the model's
    │   ├── InvalidGateError              a gate or analysis setting out of range or unknown
    │   └── GoldenSetError                golden-set folder missing, empty or badly labelled
    ├── IllegalTransitionError            exit 2: the rollout is not in a phase that allows it
    ├── ExportError                       exit 1: the export pipeline failed a check
    ├── StorageError                      exit 1: the repository could not be read or written
    │   ├── StorageAccessError            S3 refused the credentials (or there are none)
    │   └── StorageUnavailableError       the S3 endpoint could not be reached
    ├── TritonError                       exit 1: Triton refused or failed an operation
    │   ├── TritonUnavailableError        Triton could not be reached
    │   │   ├── FleetResolutionError      a dns:// fleet name resolved to no address
    │   │   └── TritonHungError           Triton took the call but did not answer in time
    │   └── VersionNotReadyError          a version did not become READY (or unloaded) in time
    ├── IntegrityError                    exit 1: a version's files differ from its manifest,
    │                                     or a manifest or the model's config is not the one
    │                                     published (refused: never loaded, never given traffic)
    ├── RoutingError                      exit 1: the Router has no version it can send to
    ├── GateFailedError                   exit 1: a canary failed a validation gate
    ├── GateUndecidedError                exit 1: the gates cannot judge the canary (no verdict)
    └── MetricsUnavailableError           exit 1: a metrics source could not be read
"""

from __future__ import annotations

__all__ = [
    "BucketNotFoundError",
    "ExportError",
    "FleetResolutionError",
    "GateFailedError",
    "GateUndecidedError",
    "GoldenSetError",
    "IllegalTransitionError",
    "IncompatibleModelError",
    "IntegrityError",
    "InvalidGateError",
    "InvalidInputError",
    "InvalidNameError",
    "InvalidVersionError",
    "InvalidWeightError",
    "MetricsUnavailableError",
    "RepoManagerError",
    "RoutingError",
    "StorageAccessError",
    "StorageError",
    "StorageUnavailableError",
    "TritonError",
    "TritonHungError",
    "TritonUnavailableError",
    "VersionExistsError",
    "VersionNotReadyError",
    "WeightsError",
]


class RepoManagerError(Exception):
    """Base of every error repo-manager raises on purpose."""

    exit_code = 1


class InvalidInputError(RepoManagerError):
    """The input can never succeed as given; nothing was changed."""

    exit_code = 2


class InvalidNameError(InvalidInputError):
    """A model name that is not one safe path segment."""


class InvalidVersionError(InvalidInputError):
    """A version that is not a positive integer."""


class InvalidWeightError(InvalidInputError):
    """A canary weight outside 0..100."""


class VersionExistsError(InvalidInputError):
    """The version is already in the repository; versions are immutable."""


class WeightsError(InvalidInputError):
    """Weights missing, unreadable, truncated, or not a YOLO detector."""


class IncompatibleModelError(InvalidInputError):
    """A new version whose inputs/outputs differ from the model's config."""


class BucketNotFoundError(InvalidInputError):
    """The repository's S3 bucket does not exist at the endpoint."""


class IllegalTransitionError(RepoManagerError):
    """The rollout's phase does not allow the requested move."""

    exit_code = 2


class ExportError(RepoManagerError):
    """The export pipeline produced something that failed its own checks."""


class StorageError(RepoManagerError):
    """The repository could not be read or written."""


class StorageAccessError(StorageError):
    """S3 refused the credentials, or none were found (the message never holds a secret)."""


class StorageUnavailableError(StorageError):
    """The S3 endpoint could not be reached."""


class TritonError(RepoManagerError):
    """Triton refused or failed a model-control or inference call."""


class TritonUnavailableError(TritonError):
    """Triton could not be reached at the given address."""


class FleetResolutionError(TritonUnavailableError):
    """A fleet's DNS name (a headless Service) resolved to no address."""


class VersionNotReadyError(TritonError):
    """A version did not reach the expected readiness before the deadline."""


class IntegrityError(RepoManagerError):
    """What is in the repository is not what was published: a file whose sha256 differs
    from its version's manifest, a file the manifest does not name, a missing or malformed
    (or, with a signing key, unsigned) manifest, or a model config changed outside
    repo-manager. Such a version is never loaded nor given traffic."""


class TritonHungError(TritonUnavailableError):
    """A server that accepts connections but answers nothing within the deadline (a
    stopped or wedged process): treated like a dead one, only slower to notice."""


class RoutingError(RepoManagerError):
    """The Router has no version it can send a request to."""


class InvalidGateError(InvalidInputError):
    """A gate bound or analysis setting that is unknown or out of its range."""


class GoldenSetError(InvalidInputError):
    """A golden-set folder that is missing, holds no images, or has unreadable labels."""


class GateFailedError(RepoManagerError):
    """A canary failed a validation gate; it was unloaded and stable serves 100%."""


class GateUndecidedError(RepoManagerError):
    """The gates cannot judge the canary (stable, the reference, scores nothing on the
    golden set): no verdict, so neither a pass nor a rollback; the canary keeps its weight."""


class MetricsUnavailableError(RepoManagerError):
    """A metrics source could not be read: never a verdict on the canary."""
