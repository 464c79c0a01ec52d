"""Load Ultralytics ``.pt`` weights and prove they are a YOLO detector before exporting.

The weights are copied into a private work folder first: Ultralytics' exporter writes its
outputs beside the ``.pt`` it loads, and the user's folder must stay untouched. The copy
is first unpickled with Ultralytics' restricted (``weights_only``) loader, so a file that
references anything outside the known model classes is refused before any of its code can
run; only then is it loaded the ordinary way for export.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repo_manager.errors import WeightsError

if TYPE_CHECKING:
    import torch

__all__ = [
    "LoadedDetector",
    "copy_and_hash",
    "import_ultralytics",
    "load_detector",
    "sha256_file",
    "trained_imgsz",
]

SUPPORTED_HEADS = frozenset({"Detect"})  # YOLOv8-style head: output [B, 4 + nc, anchors]


@dataclass(kw_only=True)
class LoadedDetector:
    """A detector ready for export, in FP32 eval mode on the CPU."""

    model: torch.nn.Module
    path: Path  # the private copy the exporter works from
    source: Path  # the user's file, for messages
    sha256: str  # of the user's file
    class_names: tuple[str, ...]
    strides: tuple[int, ...]
    #: The square image size it was trained at (``train_args.imgsz``), None if unrecorded.
    train_imgsz: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def num_anchors(self, imgsz: int) -> int:
        """Anchor points of a square input: one per cell of each stride's grid."""
        return sum((imgsz // stride) ** 2 for stride in self.strides)


def import_ultralytics() -> Any:
    """Import Ultralytics without network access: export must work offline.

    ``YOLO_OFFLINE`` is read once, at Ultralytics' import, and stops its online checks,
    downloads and auto-installs; a value the caller set wins.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import ultralytics

    return ultralytics


def sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def copy_and_hash(source: Path, dest: Path, *, chunk: int = 1 << 20) -> str:
    """Copy ``source`` to ``dest`` and return the sha256 of the bytes copied."""
    digest = hashlib.sha256()
    with source.open("rb") as src, dest.open("wb") as dst:
        while block := src.read(chunk):
            digest.update(block)
            dst.write(block)
    return digest.hexdigest()


def _refuse(source: Path, why: str) -> WeightsError:
    return WeightsError(f"{source}: {why}")


def _load_checked(copy: Path, source: Path) -> dict[str, Any]:
    """Unpickle ``copy`` with the restricted loader; every failure becomes one line."""
    from ultralytics.nn.tasks import torch_safe_load

    if not zipfile.is_zipfile(copy):  # torch.save writes a zip archive; anything else is damaged
        raise _refuse(source, "not a loadable PyTorch checkpoint (empty, truncated or corrupt)")
    try:
        ckpt, _ = torch_safe_load(str(copy), safe_only=True)
    except Exception as exc:  # torch/ultralytics raise many types for a bad file
        text = str(exc)
        if "truncated or corrupted" in text or isinstance(exc, EOFError):
            why = "not a loadable PyTorch checkpoint (empty, truncated or corrupt)"
        elif "TorchScript" in text:
            why = "a TorchScript archive, not Ultralytics .pt weights"
        elif "outside the supported" in text or isinstance(exc, ModuleNotFoundError):
            why = "holds objects outside the Ultralytics checkpoint format (refused unpickling)"
        else:
            first = " ".join(text.split())[:200]
            why = f"cannot be loaded as Ultralytics weights ({type(exc).__name__}: {first})"
        raise _refuse(source, why) from exc
    if not isinstance(ckpt, dict):
        raise _refuse(source, "not an Ultralytics checkpoint (no checkpoint dictionary)")
    return ckpt


def trained_imgsz(ckpt: dict[str, Any]) -> int | None:
    """The square size Ultralytics recorded in ``train_args.imgsz`` (an int, or ``[n]`` /
    ``[n, n]``); None when absent, not square or not a multiple of 32 (the largest stride):
    then the export falls back to its default instead of guessing."""
    args = ckpt.get("train_args")
    value = args.get("imgsz") if isinstance(args, dict) else None
    if isinstance(value, list | tuple) and value and all(v == value[0] for v in value):
        value = value[0]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 32 and not value % 32:
        return value
    return None


def load_detector(source: Path, work_dir: Path) -> LoadedDetector:
    """Copy ``source`` into ``work_dir`` and load it as a YOLO detector.

    Raises ``WeightsError`` (one line naming ``source``) for a missing, unreadable,
    truncated or foreign file, or one holding a model that is not a YOLOv8-style detector.
    """
    import torch

    if not source.exists():
        raise _refuse(source, "weights file not found")
    if not source.is_file():
        raise _refuse(source, "not a regular file")
    copy = work_dir / "model.pt"  # Ultralytics requires the .pt suffix
    try:
        sha = copy_and_hash(source, copy)
    except OSError as exc:
        raise _refuse(source, f"cannot be read ({exc.strerror or exc})") from exc

    import_ultralytics()
    ckpt = _load_checked(copy, source)
    candidate = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(candidate, torch.nn.Module):
        raise _refuse(source, "not an Ultralytics checkpoint (it holds no model)")

    from ultralytics.nn.tasks import guess_model_task, load_checkpoint

    task = getattr(candidate, "task", None) or guess_model_task(candidate)
    if task != "detect":
        raise _refuse(source, f"a YOLO {task} model, not a detector")
    layers: Any = getattr(candidate, "model", None)
    head = layers[-1] if isinstance(layers, torch.nn.Sequential) and len(layers) else None
    head_name = type(head).__name__
    if head_name not in SUPPORTED_HEADS or getattr(head, "end2end", False):
        raise _refuse(
            source, f"detection head {head_name} is not supported (need YOLOv8-style Detect)"
        )

    # The restricted load proved the file holds only known model classes; load it the
    # standard way so the model gets the attributes the exporter expects.
    try:
        model, _ = load_checkpoint(str(copy), device=torch.device("cpu"))
    except Exception as exc:
        raise _refuse(source, f"cannot be loaded ({type(exc).__name__})") from exc
    model.eval()

    names = getattr(model, "names", None)
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        class_names = tuple(str(names[i]) for i in range(len(names)))
    elif isinstance(names, list | tuple):
        class_names = tuple(str(n) for n in names)
    else:
        raise _refuse(source, "the model carries no class names")
    if len(class_names) != int(getattr(head, "nc", len(class_names))):
        raise _refuse(source, "class names do not match the detection head's class count")
    strides = tuple(int(s) for s in torch.as_tensor(model.stride).flatten().tolist())
    return LoadedDetector(
        model=model,
        path=copy,
        source=source,
        sha256=sha,
        class_names=class_names,
        strides=strides,
        train_imgsz=trained_imgsz(ckpt),
    )
