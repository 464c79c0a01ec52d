"""YOLO pre- and post-processing around one routed request (``Router.detect``).

The model config says what to send (input name, datatype, size) and what comes back (its
contract: raw ``[B, 4+nc, N]``, decoded with NMS in numpy, or end-to-end ``[B, K, 6]``
detections, only filtered); ``repo_manager.yolo`` does the work, so no torch or
Ultralytics is needed on the client. Each version names its own classes (a canary may add
or rename some): its manifest's list, read once per version, else the config's.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from repo_manager import yolo
from repo_manager.contract import END2END, RAW, contract_of
from repo_manager.errors import InvalidInputError, RepoManagerError, TritonError
from repo_manager.metrics import ShadowMetrics
from repo_manager.modelconfig import parse_class_names
from repo_manager.routing.shadow import Compare

__all__ = ["DetectRequest", "Detections", "Detector", "DetectorSpec", "Found", "class_labels"]

#: Decoded detections in image pixels: boxes (N, 4) xyxy, scores (N,), class ids (N,).
Found = tuple[np.ndarray, np.ndarray, np.ndarray]
#: A version's class names (by class id).
NamesOf = Callable[[str], tuple[str, ...]]
#: Seconds before a version whose names could not be read is asked again.
NAMES_RETRY_SECONDS = 30.0


def class_labels(class_ids: Sequence[int] | np.ndarray, names: Sequence[str]) -> list[str]:
    """The name of each class id (the id itself, as text, where ``names`` has none)."""
    return [names[i] if 0 <= i < len(names) else str(i) for i in np.asarray(class_ids).tolist()]


@dataclass(kw_only=True, frozen=True, eq=False)
class Detections:
    """Detections of one image, in its own pixel coordinates."""

    boxes: npt.NDArray[np.float32]  # (N, 4) xyxy
    scores: npt.NDArray[np.float32]  # (N,)
    class_ids: npt.NDArray[np.int64]  # (N,)
    version: str
    fallback: bool = False
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def names(self) -> dict[int, str]:
        """Class id -> class name, for every class the model knows (as Ultralytics has it)."""
        return dict(enumerate(self.class_names))

    @property
    def labels(self) -> list[str]:
        """The class name of each detection, as the version that found it names it."""
        return class_labels(self.class_ids, self.class_names)


def _require_image(image: Any) -> None:
    """Refuse anything but one HxWx3 BGR uint8 image (as ``cv2.imread`` gives it)."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise InvalidInputError(f"detect() needs an HxWx3 BGR image, got shape {shape}")
    if image.dtype != np.uint8:
        raise InvalidInputError(f"detect() needs a uint8 image, got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:  # the letterbox would divide by zero
        raise InvalidInputError(f"detect() needs a non-empty image, got shape {image.shape}")


@dataclass(kw_only=True, frozen=True)
class DetectorSpec:
    """What ``detect`` needs from the model config, read once."""

    input_name: str
    output_name: str
    datatype: str
    size: tuple[int, int]
    class_names: tuple[str, ...]
    contract: str = RAW

    @classmethod
    def from_config(cls, config: Any) -> DetectorSpec:
        if not config.input or not config.output:
            raise TritonError(f"model {config.name!r} has no inputs or outputs in its config")
        inp = config.input[0]
        dims = [int(d) for d in inp.dims]
        if config.max_batch_size == 0 and len(dims) == 4:
            dims = dims[1:]
        if len(dims) != 3 or dims[0] != 3:
            raise TritonError(f"model {config.name!r} input {inp.name!r} is {dims}, not [3, H, W]")
        params = config.parameters
        height, width = dims[1], dims[2]
        if height <= 0 or width <= 0:
            height, width = _parse_imgsz(params["imgsz"].string_value if "imgsz" in params else "")
        names: tuple[str, ...] = ()
        if "class_names" in params:
            try:
                names = parse_class_names(params["class_names"].string_value)
            except ValueError as exc:
                raise TritonError(str(exc)) from None
        try:
            contract = contract_of(config)
        except InvalidInputError as exc:
            raise TritonError(f"model {config.name!r}: {exc}") from None
        return cls(
            input_name=inp.name,
            output_name=config.output[0].name,
            datatype=model_config_pb2.DataType.Name(inp.data_type).removeprefix("TYPE_"),
            size=(height, width),
            class_names=names,
            contract=contract,
        )

    def request(
        self,
        image: npt.NDArray[np.uint8],
        *,
        model: str,
        conf: float,
        iou: float,
        max_det: int,
        names_of: NamesOf | None = None,
    ) -> DetectRequest:
        """The letterboxed tensor of ``image`` and how to read the answer back."""
        tensor, info = yolo.preprocess(image, self.size, triton_to_np_dtype(self.datatype))
        request = grpcclient.InferInput(self.input_name, list(tensor.shape), self.datatype)
        request.set_data_from_numpy(tensor)
        return DetectRequest(
            model=model,
            names_of=names_of or (lambda _version: self.class_names),
            contract=self.contract,
            inputs=[request],
            outputs=[grpcclient.InferRequestedOutput(self.output_name)],
            output_name=self.output_name,
            letterbox=info,
            conf=conf,
            iou=iou,
            max_det=max_det,
        )


@dataclass(kw_only=True, frozen=True, eq=False)
class DetectRequest:
    """One image's tensors for Triton and the settings that decode its answer."""

    model: str
    #: The class names of a version (``Detector.names_of``).
    names_of: NamesOf
    contract: str
    inputs: list[grpcclient.InferInput]
    outputs: list[grpcclient.InferRequestedOutput]
    output_name: str
    letterbox: yolo.LetterboxInfo
    conf: float
    iou: float
    max_det: int

    def decode(self, result: Any) -> Found:
        """Triton's answer -> detections in the original image's pixels."""
        raw = result.as_numpy(self.output_name)
        if raw is None:
            raise TritonError(f"model {self.model} returned no output {self.output_name!r}")
        if self.contract == END2END:  # NMS ran inside the graph (``iou`` is the graph's)
            decoded = yolo.decode_end2end(raw, conf=self.conf, max_det=self.max_det)
        else:
            decoded = yolo.decode(raw, conf=self.conf, iou=self.iou, max_det=self.max_det)
        boxes, scores, class_ids = decoded[0]
        return yolo.scale_boxes(boxes, self.letterbox), scores, class_ids

    def detections(self, found: Found, *, version: str, fallback: bool) -> Detections:
        boxes, scores, class_ids = found
        return Detections(
            boxes=boxes,
            scores=scores,
            class_ids=class_ids,
            version=version,
            fallback=fallback,
            class_names=self.names_of(version),
        )

    def comparison(self, reference: Found, reference_version: str) -> Compare:
        """Records how many of a shadow answer's boxes match ``reference`` (the user's, from
        ``reference_version``) one to one, classes compared by name; the shadow's boxes of
        classes the reference version does not know are counted apart (``new_class``)."""

        def compare(result: Any, sm: ShadowMetrics) -> None:
            ref_boxes, _, ref_cls = reference
            ref_names = self.names_of(reference_version)
            ref_labels = np.asarray(class_labels(ref_cls, ref_names), dtype=object)
            boxes, scores, shadow_cls = self.decode(result)
            labels = np.asarray(class_labels(shadow_cls, self.names_of(sm.version)), dtype=object)
            known = np.isin(labels, np.asarray(ref_names, dtype=object))
            matched = yolo.match_count(
                (ref_boxes, ref_labels), (boxes[known], scores[known], labels[known])
            )
            sm.add(
                boxes_reference=len(ref_cls),
                boxes_shadow=int(known.sum()),
                boxes_matched=matched,
                boxes_new_class=int((~known).sum()),
            )

        return compare


class Detector:
    """Turns images into requests for one model, its config read once, when first needed,
    and each version's class names once (versions are immutable)."""

    def __init__(
        self,
        model: str,
        read_config: Callable[[], Any],
        read_names: Callable[[str], tuple[str, ...] | None] | None = None,
    ) -> None:
        """``read_config`` returns the model config (``ServerPool.model_config``);
        ``read_names`` a version's class names (from its manifest), None when unknown."""
        self.model = model
        self._read_config = read_config
        self._read_names = read_names
        self._spec: DetectorSpec | None = None
        self._lock = threading.Lock()
        #: version -> (names, monotonic time they may be read again; inf: for good)
        self._names: dict[str, tuple[tuple[str, ...], float]] = {}

    def names_of(self, version: str) -> tuple[str, ...]:
        """The classes ``version`` names: its own (its manifest), else the config's. A
        failed read is tried again after ``NAMES_RETRY_SECONDS``."""
        known = self._names.get(version)
        now = time.monotonic()
        if known is not None and now < known[1]:
            return known[0]
        names: tuple[str, ...] | None = None
        if self._read_names is not None:
            try:
                names = self._read_names(version)
            except (RepoManagerError, OSError, ValueError):
                names = None
        if names is None:
            self._names[version] = (self.spec().class_names, now + NAMES_RETRY_SECONDS)
            return self.spec().class_names
        self._names[version] = (names, float("inf"))
        return names

    def spec(self) -> DetectorSpec:
        spec = self._spec
        if spec is not None:
            return spec
        with self._lock:
            if self._spec is None:
                try:
                    config = self._read_config()
                except InferenceServerException as exc:
                    raise TritonError(f"cannot read config of model {self.model}: {exc}") from exc
                self._spec = DetectorSpec.from_config(config)
            return self._spec

    def request(
        self, image: npt.NDArray[np.uint8], *, conf: float, iou: float, max_det: int
    ) -> DetectRequest:
        """Checks ``image`` (before any server is asked) and letterboxes it."""
        _require_image(image)
        return self.spec().request(
            image, model=self.model, conf=conf, iou=iou, max_det=max_det, names_of=self.names_of
        )


def _parse_imgsz(text: str) -> tuple[int, int]:
    """``"640"``, ``"[480, 640]"`` or ``"480,640"`` -> (height, width); 640 when absent."""
    if not text.strip():
        return (640, 640)
    try:
        value = json.loads(text if not ("," in text and "[" not in text) else f"[{text}]")
    except ValueError as exc:
        raise TritonError(f"model parameter imgsz={text!r} is not a size") from exc
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, list) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise TritonError(f"model parameter imgsz={text!r} is not a size")
