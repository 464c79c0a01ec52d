"""Which export settings a version gets: what the command line gave, else what the model
already serves, else what the checkpoint was trained at, else the built-in default.

One config serves every version of a model, so a later version must be exported at the
model's image size, batch bound and format: ``publish yolov8s 3 --weights v3.pt`` takes
them from the current config instead of exporting at a default that the model then
refuses. A value given on the command line that differs from the model's is refused here,
in words, before the export (seconds to minutes) runs. The image size of a model's first
version comes from the checkpoint (Ultralytics records ``train_args.imgsz``): a detector
trained at 160 px detects nothing at 640. Pure: reads a config, talks to no server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from export.formats import FORMATS
from export.pipeline import ExportOptions
from repo_manager.contract import DEFAULT_CONTRACT, contract_of
from repo_manager.errors import IncompatibleModelError
from repo_manager.modelconfig import ModelConfig

__all__ = ["DEFAULTS", "ChosenOptions", "ServedSettings", "choose_export_options"]

#: The built-in defaults of the settings a later version inherits (``imgsz``: only when the
#: checkpoint records no training size either).
#: ``contract``: a new model's; a model keeps the contract of its first version (a config
#: without the parameter is raw: published before contracts existed).
DEFAULTS: dict[str, Any] = {
    "format": "python",
    "contract": DEFAULT_CONTRACT,
    "imgsz": 640,
    "max_batch": 8,
    "instances": 1,
}

#: How each inherited setting is named in messages (as its command-line option reads).
_WORDS = {
    "format": "format",
    "contract": "contract",
    "imgsz": "imgsz",
    "max_batch": "max batch",
    "instances": "instances",
}


@dataclass(kw_only=True, frozen=True)
class ServedSettings:
    """The export settings a model's config serves: what its next version inherits."""

    format: str | None
    contract: str
    imgsz: int | None
    max_batch: int
    instances: int

    def __post_init__(self) -> None:
        if self.max_batch < 0 or self.instances < 1:
            raise ValueError(f"not a served config: {self}")

    @classmethod
    def of(cls, config: ModelConfig) -> ServedSettings:
        """Read from a detector config (``imgsz`` parameter, else the input's last dim)."""
        kind = config.platform or config.backend
        fmt = next((f.name for f in FORMATS.values() if f.backend_or_platform == kind), None)
        imgsz: int | None = None
        if "imgsz" in config.parameters and config.parameters["imgsz"].string_value.isdigit():
            imgsz = int(config.parameters["imgsz"].string_value)
        elif config.input and len(config.input[0].dims) >= 2:
            imgsz = int(config.input[0].dims[-1])
        instances = config.instance_group[0].count if config.instance_group else 1
        return cls(
            format=fmt,
            contract=contract_of(config),
            imgsz=imgsz,
            max_batch=int(config.max_batch_size),
            instances=max(1, int(instances)),
        )


@dataclass(kw_only=True, frozen=True)
class ChosenOptions:
    """The options to export with, and where each inherited setting came from."""

    options: ExportOptions
    #: Setting -> "given", "<model>'s config" or "default" (``imgsz`` may also be
    #: "checkpoint": resolved by the export, which reads the checkpoint).
    sources: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """``imgsz 160 (yolov8s's config), max batch 4 (yolov8s's config), ...``."""
        parts = []
        for name, source in self.sources.items():
            value = getattr(self.options, name)
            shown = "the checkpoint's training size, else 640" if value is None else value
            parts.append(f"{_WORDS[name]} {shown} ({source})")
        return ", ".join(parts)


def choose_export_options(
    given: Mapping[str, Any], served: ModelConfig | None, *, model: str
) -> ChosenOptions:
    """Export options from the command line's ``given`` values (None: not given).

    Each inherited setting (format, contract, imgsz, max_batch, instances) not given is the
    served config's; without a config, the default (``imgsz`` None: the export takes the
    checkpoint's training size). A given value that differs from what the model serves
    raises IncompatibleModelError naming both, before anything is exported.
    """
    current = ServedSettings.of(served) if served is not None else None
    values = {k: v for k, v in given.items() if k not in DEFAULTS}
    sources: dict[str, str] = {}
    conflicts: list[str] = []
    for name, default in DEFAULTS.items():
        value = given.get(name)
        inherited = None if current is None else getattr(current, name)
        if value is not None:
            sources[name] = "given"
            # Instances are the config's business; the others decide what the version is.
            if inherited is not None and name != "instances" and value != inherited:
                conflicts.append(f"{_WORDS[name]} {value}, the model serves {inherited}")
        elif inherited is not None:
            value, sources[name] = inherited, f"{model}'s config"
        elif name == "imgsz":
            value, sources[name] = None, "checkpoint"
        else:
            value, sources[name] = default, "default"
        values[name] = value
    if conflicts:
        raise IncompatibleModelError(
            f"{model} cannot take this version: {'; '.join(conflicts)} (one config serves "
            "every version: leave the option out to inherit it, or publish under a new name)"
        )
    return ChosenOptions(options=ExportOptions(**values), sources=sources)
