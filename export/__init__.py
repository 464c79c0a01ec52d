"""The export pipeline: Ultralytics ``.pt`` weights -> versioned Triton model folders.

Importing this package is cheap: torch, Ultralytics and onnx load only when an export
runs. It never talks to a server and knows nothing of rollouts.
"""

from __future__ import annotations

from export.formats import FORMATS
from export.pipeline import (
    ExportOptions,
    ExportResult,
    export_model,
    export_plan_for_this_gpu,
    load_exported,
    stage_exported,
)
from export.settings import ChosenOptions, choose_export_options

__all__ = [
    "FORMATS",
    "ChosenOptions",
    "ExportOptions",
    "ExportResult",
    "choose_export_options",
    "export_model",
    "export_plan_for_this_gpu",
    "load_exported",
    "stage_exported",
]
