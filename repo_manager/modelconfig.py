"""Triton ``config.pbtxt`` read and written through the ``ModelConfig`` protobuf.

Configs are never assembled from string templates: building the message that tritonclient
ships means Triton's own schema rejects a misspelt field here, not in a server log, and
the same message renders as ``config.pbtxt`` on disk and as the JSON override that
``load_model(name, config=...)`` takes.

``build_detector_config`` is the one writer for every serving format: a format changes
only the backend or platform, the instance kind and optional extra parameters.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc.model_config_pb2 import ModelConfig

from repo_manager.contract import CONTRACT_PARAMETER, END2END, RAW, check_contract, contract_of
from repo_manager.errors import IncompatibleModelError, InvalidVersionError, StorageError

__all__ = [
    "PLATFORMS",
    "ModelConfig",
    "TensorSpec",
    "add_tensorrt_accelerator",
    "alias_target",
    "build_alias_config",
    "build_detector_config",
    "config_to_json",
    "io_signature",
    "merge_cc_model_filenames",
    "parse_class_names",
    "parse_config",
    "public_config_base",
    "render_config",
    "ultralytics_metadata",
    "with_version_policy",
]

# Values of ``backend_or_platform`` that Triton knows as a *platform*; anything else is a
# backend name ("python", "onnxruntime", ...).
PLATFORMS = frozenset(
    {
        "onnxruntime_onnx",
        "tensorrt_plan",
        "pytorch_libtorch",
        "tensorflow_graphdef",
        "tensorflow_savedmodel",
    }
)

TensorSignature = tuple[str, str, tuple[int, ...]]  # (name, data_type, dims)

# No added wait: requests that queue while the instance is busy are still batched, and a
# lone request is not held back (on CPU a batch costs what its images cost one by one;
# bench/serving.py --levers measures 500 µs against 0).
DEFAULT_MAX_QUEUE_DELAY_US = 0
# Runs of the batch-1 warm-up sample: onnxruntime's first runs at a shape still allocate
# and the stub's first requests still map shared memory (bench/warmup.py measures it).
WARMUP_COUNT = 3


@dataclass(kw_only=True, frozen=True)
class TensorSpec:
    """One model input or output as Triton sees it: dims exclude the batch dimension."""

    name: str
    data_type: str  # a DataType enum name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        # Fail where the spec is made, not when Triton loads the config.
        model_config_pb2.DataType.Value(self.data_type)
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))


def parse_config(text: str | bytes, *, source: str) -> ModelConfig:
    """Parse config.pbtxt text; ``source`` names the file in the one-line error."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return text_format.Parse(text, ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        detail = " ".join(str(exc).split())
        raise StorageError(f"{source}: invalid Triton model config: {detail}") from exc


def render_config(config: ModelConfig) -> bytes:
    """The config as config.pbtxt text (protobuf text format)."""
    text: str = text_format.MessageToString(config)
    return text.encode("utf-8")


def config_to_json(config: ModelConfig) -> str:
    """The config as the JSON that Triton's ``load_model(name, config=...)`` accepts."""
    text: str = json_format.MessageToJson(config, preserving_proto_field_name=True)
    return text


def with_version_policy(config: ModelConfig, versions: Sequence[str]) -> ModelConfig:
    """A copy that serves exactly ``versions`` (e.g. stable and canary side by side)."""
    numbers: set[int] = set()
    for version in versions:
        if not str(version).isdigit() or int(version) < 1:
            raise InvalidVersionError(f"version {version!r} is not a positive integer")
        numbers.add(int(version))
    if not numbers:
        raise InvalidVersionError("a version policy needs at least one version")
    copy = ModelConfig()
    copy.CopyFrom(config)
    copy.ClearField("version_policy")
    copy.version_policy.specific.versions.extend(sorted(numbers))
    return copy


def io_signature(
    config: ModelConfig,
) -> tuple[int, tuple[TensorSignature, ...], tuple[TensorSignature, ...]]:
    """``(max_batch_size, inputs, outputs)``, each tensor ``(name, data_type, dims)``.

    Two versions served under one config must have equal signatures; tensors are sorted
    by name because their order in the config carries no meaning.
    """

    def tensors(items: Iterable[Any]) -> tuple[TensorSignature, ...]:
        return tuple(
            sorted(
                (
                    str(item.name),
                    str(model_config_pb2.DataType.Name(item.data_type)),
                    tuple(int(d) for d in item.dims),
                )
                for item in items
            )
        )

    return int(config.max_batch_size), tensors(config.input), tensors(config.output)


def build_detector_config(
    *,
    name: str,
    backend_or_platform: str,
    max_batch_size: int,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    instance_kind: str,
    instance_count: int,
    class_names: Sequence[str],
    imgsz: int,
    parameters: Mapping[str, str] | None = None,
    dynamic_batching: bool = True,
    cc_model_filenames: Mapping[str, str] | None = None,
    contract: str = RAW,
) -> ModelConfig:
    """The config of a YOLO detector in any serving format.

    It carries what every format needs: inputs/outputs, an instance group, dynamic
    batching, a warm-up request per input built from the real input specs (a fresh
    session's first inference is slow, so a version counts as ready only after it), and
    ``class_names`` (JSON list), ``imgsz``, ``contract`` (``repo_manager.contract``) and
    ``metadata`` (what Ultralytics' own Triton client reads) parameters for clients and
    the manager.
    ``instance_kind`` is "KIND_CPU"/"KIND_GPU" (or "cpu"/"gpu"); ``parameters`` adds
    format-specific string parameters.
    """
    if max_batch_size < 0:
        raise ValueError(f"max_batch_size must be >= 0, got {max_batch_size}")
    if instance_count < 1:
        raise ValueError(f"instance_count must be >= 1, got {instance_count}")
    if not inputs or not outputs:
        raise ValueError("a model config needs at least one input and one output")
    kind = instance_kind.upper()
    if not kind.startswith("KIND_"):
        kind = f"KIND_{kind}"

    config = ModelConfig(name=name, max_batch_size=max_batch_size)
    if backend_or_platform in PLATFORMS:
        config.platform = backend_or_platform
    else:
        config.backend = backend_or_platform
    for spec in inputs:
        config.input.add(
            name=spec.name,
            data_type=model_config_pb2.DataType.Value(spec.data_type),
            dims=list(spec.dims),
        )
    for spec in outputs:
        config.output.add(
            name=spec.name,
            data_type=model_config_pb2.DataType.Value(spec.data_type),
            dims=list(spec.dims),
        )
    config.instance_group.add(
        kind=model_config_pb2.ModelInstanceGroup.Kind.Value(kind), count=instance_count
    )
    if dynamic_batching and max_batch_size > 0:
        config.dynamic_batching.SetInParent()
        config.dynamic_batching.max_queue_delay_microseconds = DEFAULT_MAX_QUEUE_DELAY_US

    warmup = config.model_warmup.add(name="random_batch1", batch_size=1, count=WARMUP_COUNT)
    for spec in inputs:
        warmup.inputs[spec.name].data_type = model_config_pb2.DataType.Value(spec.data_type)
        warmup.inputs[spec.name].dims.extend(spec.dims)
        warmup.inputs[spec.name].random_data = True

    # Plans built for several GPU kinds: Triton picks the file of the GPU's compute capability.
    for capability, filename in sorted((cc_model_filenames or {}).items()):
        config.cc_model_filenames[capability] = filename

    merged = {
        "class_names": json.dumps(list(class_names)),
        "imgsz": str(int(imgsz)),
        CONTRACT_PARAMETER: check_contract(contract),
        "metadata": ultralytics_metadata(class_names=class_names, imgsz=imgsz, contract=contract),
    }
    merged.update(parameters or {})
    for key, value in sorted(merged.items()):
        config.parameters[key].string_value = str(value)
    return config


def add_tensorrt_accelerator(config: ModelConfig, *, fp16: bool, workspace_gib: float) -> None:
    """Run an ``onnxruntime_onnx`` model through onnxruntime's TensorRT accelerator.

    The engine is then built by Triton when the model loads (the warm-up pays for it), on
    the serving GPU, so it always matches that server's TensorRT.
    """
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
        name="tensorrt"
    )
    accelerator.parameters["precision_mode"] = "FP16" if fp16 else "FP32"
    accelerator.parameters["max_workspace_size_bytes"] = str(int(workspace_gib * (1 << 30)))


def merge_cc_model_filenames(config: ModelConfig, extra: Mapping[str, str]) -> ModelConfig:
    """A copy of ``config`` whose ``cc_model_filenames`` also maps ``extra``.

    An existing entry that names another file is a conflict: two builds claim one GPU kind.
    """
    merged = ModelConfig()
    merged.CopyFrom(config)
    for capability, filename in sorted(extra.items()):
        present = merged.cc_model_filenames.get(capability)
        if present is not None and present != filename:
            raise IncompatibleModelError(
                f"compute capability {capability} maps to {present}, not {filename}"
            )
        merged.cc_model_filenames[capability] = filename
    return merged


def ultralytics_metadata(*, class_names: Sequence[str], imgsz: int, contract: str = RAW) -> str:
    """The ``metadata`` parameter that Ultralytics' ``TritonRemoteModel`` reads.

    It parses the string with ``ast.literal_eval`` and applies it as its model's metadata:
    without it ``YOLO("grpc://host:8001/yolov8s", task="detect")`` names the classes
    ``class0`` ... ``class998`` and guesses size and stride. A Python literal, not JSON
    (JSON's ``true`` is no literal). ``dynamic`` is False: the served input is ``imgsz``
    square, and a dynamic model would get minimally padded, non-square images.

    ``batch`` is 1: Ultralytics 8.4's ``AutoBackend.forward`` pads every request of a
    non-dynamic model up to ``batch`` images (with ``batch: 8``, 6 one-image requests were
    48 inferences in Triton's statistics) and splits a longer list into requests of
    ``batch``; at 1 every image is one request of one image, whatever ``max_batch_size``.
    ``end2end`` makes it skip its own NMS and read ``[B, K, 6]`` rows (end-to-end contract).
    """
    size = int(imgsz)
    document = {
        "task": "detect",
        "stride": 32,
        "batch": 1,
        "imgsz": [size, size],
        "names": dict(enumerate(str(name) for name in class_names)),
        "end2end": check_contract(contract) == END2END,
        "args": {"batch": 1, "dynamic": False, "nms": False},
    }
    return repr(document)


def build_alias_config(
    *,
    name: str,
    target_name: str,
    target: ModelConfig,
    version: str,
    class_names: Sequence[str] | None = None,
) -> ModelConfig:
    """The public name's config: an ensemble whose one step pins ``target_name:version``.

    Unpinned requests to ``name`` then reach that version only, whatever else of
    ``target_name`` is READY (Triton sends an unpinned request to the highest READY
    version, i.e. the canary). Inputs, outputs and parameters (class names, ``metadata``
    for Ultralytics' client) are the target's, so a client cannot tell the alias from the
    model. Measured on Triton 2.51: same outputs as the pinned model, latency within noise;
    re-pointing it reloads only the ensemble (no weights), never the target's versions.
    ``class_names``: the pinned version's own (see ``public_config_base``).
    """
    if not str(version).isdigit() or int(version) < 1:
        raise InvalidVersionError(f"version {version!r} is not a positive integer")
    alias = public_config_base(name=name, target=target, class_names=class_names)
    alias.platform = "ensemble"
    step = alias.ensemble_scheduling.step.add(model_name=target_name, model_version=int(version))
    for tensor in target.input:
        step.input_map[tensor.name] = tensor.name
    for tensor in target.output:
        step.output_map[tensor.name] = tensor.name
    return alias


def public_config_base(
    *, name: str, target: ModelConfig, class_names: Sequence[str] | None = None
) -> ModelConfig:
    """What every config of a public name shares with the versions model it answers for:
    inputs, outputs, max batch and parameters (class names, ``metadata`` for Ultralytics'
    client), so that a client cannot tell the public name from the model.

    ``class_names``: those of the version the public name answers from (stable's, read
    from its manifest). Versions of an end-to-end model may name other classes than the
    first version whose names the versions model's config carries; the public name's
    ``class_names`` and ``metadata`` are then stable's, and a promote moves them."""
    public = ModelConfig(name=name, max_batch_size=target.max_batch_size)
    for tensor in target.input:
        public.input.add(name=tensor.name, data_type=tensor.data_type, dims=list(tensor.dims))
    for tensor in target.output:
        public.output.add(name=tensor.name, data_type=tensor.data_type, dims=list(tensor.dims))
    for key in sorted(target.parameters):
        public.parameters[key].string_value = target.parameters[key].string_value
    names = list(class_names) if class_names is not None else _class_names(target)
    if class_names is not None:
        public.parameters["class_names"].string_value = json.dumps(names)
    if class_names is not None or "metadata" not in target.parameters:
        # (no metadata: a version exported before the parameter existed)
        public.parameters["metadata"].string_value = ultralytics_metadata(
            class_names=names,
            imgsz=_served_imgsz(target),
            contract=contract_of(target),
        )
    return public


def _served_imgsz(config: ModelConfig) -> int:
    text = config.parameters["imgsz"].string_value if "imgsz" in config.parameters else ""
    return int(text) if text.isdigit() else 640


def parse_class_names(text: str) -> tuple[str, ...]:
    """The ``class_names`` parameter: a JSON list, or Ultralytics' ``{id: name}`` dict,
    as a tuple by id. Raises ValueError saying what is wrong."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"model parameter class_names is not JSON: {exc}") from None
    if isinstance(value, dict):
        return tuple(str(value[k]) for k in sorted(value, key=int))
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    raise ValueError("model parameter class_names is neither a list nor a dict")


def _class_names(config: ModelConfig) -> list[str]:
    """Best effort for an old version's alias: unreadable names are no names."""
    if "class_names" not in config.parameters:
        return []
    try:
        return list(parse_class_names(config.parameters["class_names"].string_value))
    except ValueError:
        return []


def alias_target(config: ModelConfig) -> str | None:
    """The version an alias config pins (None when ``config`` is no alias)."""
    if config.platform != "ensemble" or len(config.ensemble_scheduling.step) != 1:
        return None
    version = int(config.ensemble_scheduling.step[0].model_version)
    return str(version) if version > 0 else None
