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
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repo_manager.errors import WeightsError

if TYPE_CHECKING:
    import torch

__all__ = [
    "SUPPORTED_GENERATIONS",
    "LoadedDetector",
    "checkpoint_lineage",
    "copy_and_hash",
    "import_ultralytics",
    "load_detector",
    "sha256_file",
    "trained_imgsz",
]

#: Detection heads served, and the generations that have them (Ultralytics 8.4 builds every
#: one of these from its own yaml files): ``Detect`` (YOLOv3u, v5u, v6, v8, v9, 11 and 12
#: one-to-many; YOLO26 one-to-many plus one-to-one) and ``v10Detect`` (YOLOv10, both).
SUPPORTED_HEADS = frozenset({"Detect", "v10Detect"})
SUPPORTED_GENERATIONS = "YOLOv3u, v5u, v6, v8, v9, v10, 11, 12 and 26"
#: The keys of ``train_args`` a model review needs (the manifest's lineage).
LINEAGE_TRAIN_ARGS = ("data", "epochs", "imgsz", "model")


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
    #: The detection head's class name (``Detect``, ``v10Detect``).
    head: str = "Detect"
    #: True when the head has a one-to-one (NMS-free) branch: YOLOv10, YOLO26.
    has_one2one_head: bool = False
    #: Where it came from: generation, head, Ultralytics version, train_args (see
    #: ``checkpoint_lineage``); recorded in the manifest.
    lineage: dict[str, Any] = field(default_factory=dict)

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


def _generation(yaml_file: str) -> str | None:
    """``yolov8`` of ``yolov8n.yaml``, ``yolo26`` of ``yolo26n.yaml`` (None: unknown)."""
    found = re.match(r"(yolov?\d+)", Path(yaml_file).name.lower())
    return found.group(1) if found else None


def checkpoint_lineage(ckpt: dict[str, Any], model: Any, head: str) -> dict[str, Any]:
    """What a model review needs to know of a checkpoint: its generation (from the yaml it
    was built from), head, the Ultralytics version that wrote it, and the ``train_args``
    that say what it was trained on (data, epochs, imgsz, model)."""
    yaml = getattr(model, "yaml", None)
    yaml_file = str(yaml.get("yaml_file", "")) if isinstance(yaml, dict) else ""
    args = ckpt.get("train_args")
    train_args = (
        {k: args[k] for k in LINEAGE_TRAIN_ARGS if k in args} if isinstance(args, dict) else {}
    )
    return {
        "generation": _generation(yaml_file or str(train_args.get("model", ""))),
        "head": head,
        "ultralytics_version": ckpt.get("version"),
        "train_args": {
            k: v if isinstance(v, int | float | str | bool | list) or v is None else str(v)
            for k, v in train_args.items()
        },
    }


def _head_refusal(candidate: Any, head: Any, task: str | None) -> str | None:
    """Why a model is not served (None: it is)."""
    head_name = type(head).__name__
    if head_name == "RTDETRDecoder" or type(candidate).__name__.startswith("RTDETR"):
        return f"an RT-DETR detector is not supported (served: {SUPPORTED_GENERATIONS})"
    if task != "detect":
        return f"a YOLO {task or 'non-detection'} model, not a detector (served: " + (
            f"{SUPPORTED_GENERATIONS})"
        )
    if head_name not in SUPPORTED_HEADS:
        return (
            f"detection head {head_name} is not supported (served: {SUPPORTED_GENERATIONS}, "
            f"heads {', '.join(sorted(SUPPORTED_HEADS))})"
        )
    return None


def load_detector(source: Path, work_dir: Path) -> LoadedDetector:
    """Copy ``source`` into ``work_dir`` and load it as a YOLO detector.

    Raises ``WeightsError`` (one line naming ``source``) for a missing, unreadable,
    truncated or foreign file, or one holding a model that is not a YOLO detector of a
    served generation (segment, pose, OBB, classify, RT-DETR, YOLO-World and YOLOE are not).
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

    layers: Any = getattr(candidate, "model", None)
    head = layers[-1] if isinstance(layers, torch.nn.Sequential) and len(layers) else None
    task = getattr(candidate, "task", None) or guess_model_task(candidate)
    refusal = _head_refusal(candidate, head, task)
    if refusal is not None:
        raise _refuse(source, refusal)
    head_name = type(head).__name__

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
        head=head_name,
        has_one2one_head=getattr(head, "one2one_cv2", None) is not None,
        lineage=checkpoint_lineage(ckpt, model, head_name),
    )
