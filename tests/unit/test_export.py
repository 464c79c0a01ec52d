"""The export pipeline: .pt -> checked ONNX -> staged Triton model folder.

Uses an untrained YOLOv8n (random weights, seconds to make) at imgsz 160: export, checks
and config only care about shapes and numerics, not about what the model detects.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2

from export import ExportOptions, ExportResult, export_model
from export.manifest import MANIFEST_FILE, manifest_mismatches
from export.onnx_export import DetectorIO, check_onnx, read_io
from export.tiny_detector import (
    RECIPES,
    Recipe,
    generate_shapes_dataset,
    generate_shapes_image,
    make_untrained_detector,
)
from export.weights import load_detector
from repo_manager.errors import (
    ExportError,
    IncompatibleModelError,
    InvalidInputError,
    VersionExistsError,
    WeightsError,
)
from repo_manager.modelconfig import ModelConfig, config_to_json, parse_config
from tests.checkpoints import NOT_SERVED, untrained_checkpoint

IMGSZ = 160
ANCHORS = (160 // 8) ** 2 + (160 // 16) ** 2 + (160 // 32) ** 2  # 525
BACKEND_FILE = Path(__file__).resolve().parents[2] / "export" / "backend" / "model.py"


def options(**overrides: Any) -> ExportOptions:
    return ExportOptions(**{"imgsz": IMGSZ, "max_batch": 4, "contract": "raw", **overrides})


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding only the detector weights (to prove nothing lands beside them)."""
    folder = tmp_path_factory.mktemp("weights")
    make_untrained_detector(folder / "detector.pt")
    return folder


@pytest.fixture(scope="module")
def weights(weights_dir: Path) -> Path:
    return weights_dir / "detector.pt"


@pytest.fixture(scope="module")
def exported(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    out = tmp_path_factory.mktemp("repo") / "shapes"
    return export_model(weights, out, model_name="shapes", version="1", options=options())


def tamper(source: Path, dest: Path, edit: Callable[[Any], None]) -> Path:
    import onnx

    model = onnx.load(str(source))
    edit(model)
    onnx.save(model, str(dest))
    return dest


def expected_io(num_classes: int = 2) -> DetectorIO:
    return DetectorIO(imgsz=IMGSZ, num_classes=num_classes, num_anchors=ANCHORS)


# -- the exported folder -----------------------------------------------------------------


def test_python_export_writes_config_and_a_version_folder(exported: ExportResult) -> None:
    assert exported.model_dir.name == "shapes"
    assert exported.version_dir == exported.model_dir / "1"
    assert sorted(p.name for p in exported.model_dir.iterdir()) == ["1", "config.pbtxt"]
    assert sorted(p.name for p in exported.version_dir.iterdir()) == [
        "manifest.json",
        "model.onnx",
        "model.py",
    ]


def test_no_staging_folder_is_left_beside_the_output(exported: ExportResult) -> None:
    assert [p.name for p in exported.model_dir.parent.iterdir()] == ["shapes"]


def test_written_config_parses_back_as_the_returned_model_config(exported: ExportResult) -> None:
    path = exported.model_dir / "config.pbtxt"
    parsed = parse_config(path.read_bytes(), source=str(path))
    assert isinstance(parsed, ModelConfig)
    assert parsed == exported.config
    assert parsed.name == "shapes"
    assert parsed.backend == "python"
    assert parsed.max_batch_size == 4
    assert json.loads(parsed.parameters["class_names"].string_value) == ["rectangle", "circle"]
    assert parsed.parameters["imgsz"].string_value == "160"
    json.loads(config_to_json(parsed))


def test_config_io_is_read_from_the_onnx_graph(exported: ExportResult) -> None:
    inputs, outputs = read_io(exported.version_dir / "model.onnx")
    config = exported.config
    assert [(i.name, list(i.dims)) for i in config.input] == [
        (s.name, list(s.dims)) for s in inputs
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [
        (s.name, list(s.dims)) for s in outputs
    ]
    assert [list(o.dims) for o in config.output] == [[6, ANCHORS]]


def test_warmup_block_uses_the_real_input(exported: ExportResult) -> None:
    (warmup,) = exported.config.model_warmup
    (config_input,) = exported.config.input
    assert warmup.batch_size == 1
    sample = warmup.inputs[config_input.name]
    assert sample.random_data
    assert list(sample.dims) == list(config_input.dims) == [3, IMGSZ, IMGSZ]
    assert sample.data_type == config_input.data_type


def test_onnx_has_a_dynamic_batch_and_fixed_spatial_dims(exported: ExportResult) -> None:
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(exported.version_dir / "model.onnx")).graph
    (inp,) = graph.input
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [3, IMGSZ, IMGSZ]
    session = ort.InferenceSession(
        str(exported.version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    for batch in (1, 3):
        x = np.zeros((batch, 3, IMGSZ, IMGSZ), dtype=np.float32)
        (y,) = session.run(None, {"images": x})
        assert y.shape == (batch, 6, ANCHORS)


def test_model_py_is_the_backend_file(exported: ExportResult) -> None:
    assert (exported.version_dir / "model.py").read_bytes() == BACKEND_FILE.read_bytes()


def test_manifest_records_hashes_interface_and_tools(exported: ExportResult, weights: Path) -> None:
    manifest = json.loads((exported.version_dir / MANIFEST_FILE).read_text())
    assert manifest == exported.manifest
    assert set(manifest["files"]) == {"model.onnx", "model.py"}
    assert manifest_mismatches(exported.version_dir, manifest) == []
    assert manifest["source_weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert manifest["imgsz"] == IMGSZ
    assert manifest["class_names"] == ["rectangle", "circle"]
    assert manifest["format"] == "python"
    assert manifest["inputs"] == [
        {"name": "images", "data_type": "TYPE_FP32", "dims": [3, IMGSZ, IMGSZ]}
    ]
    assert manifest["outputs"][0]["dims"] == [6, ANCHORS]
    assert set(manifest["tools"]) >= {"ultralytics", "torch", "onnx", "onnxruntime", "repo-manager"}
    assert manifest["created_utc"].endswith("+00:00")
    check = manifest["numerical_check"]
    assert check["max_abs_diff_boxes"] < 1e-2 and check["max_abs_diff_scores"] < 1e-4


def test_manifest_mismatches_name_changed_and_extra_files(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"a")
    from export.manifest import file_digests

    manifest = {"files": file_digests(tmp_path)}
    (tmp_path / "model.onnx").write_bytes(b"b")
    (tmp_path / "extra.bin").write_bytes(b"c")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"d")
    assert manifest_mismatches(tmp_path, manifest) == [
        "extra.bin: not in the manifest",
        "model.onnx: sha256 differs",
    ]


def test_nothing_is_written_beside_the_weights_or_in_the_cwd(
    weights: Path, weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sorted(p.name for p in weights_dir.iterdir())
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    export_model(weights, tmp_path / "out" / "m", model_name="m", options=options(format="onnx"))
    assert sorted(p.name for p in weights_dir.iterdir()) == before == ["detector.pt"]
    assert list(cwd.iterdir()) == []


# -- numerical and structural checks -------------------------------------------------------


def test_numerical_check_agrees_with_pytorch(
    exported: ExportResult, weights: Path, tmp_path: Path
) -> None:
    from export.onnx_export import pytorch_reference

    detector = load_detector(weights, tmp_path)
    result = check_onnx(
        exported.version_dir / "model.onnx",
        expected=expected_io(),
        reference=pytorch_reference(detector, head_mode="one2many", imgsz=IMGSZ),
    )
    assert result is not None
    assert result.batch == 2
    assert result.max_abs_diff_boxes < 1e-2


def test_check_refuses_numbers_that_differ_from_pytorch(exported: ExportResult) -> None:
    import onnxruntime as ort

    path = exported.version_dir / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def off_by_a_pixel(x: np.ndarray) -> np.ndarray:
        (y,) = session.run(None, {"images": x})
        return np.asarray(y) + 1.0

    with pytest.raises(ExportError, match="differ from PyTorch"):
        check_onnx(path, expected=expected_io(), reference=off_by_a_pixel)


def test_check_refuses_a_renamed_input(exported: ExportResult, tmp_path: Path) -> None:
    def rename(model: Any) -> None:
        model.graph.input[0].name = "input"
        for node in model.graph.node:
            node.input[:] = ["input" if n == "images" else n for n in node.input]

    path = tamper(exported.version_dir / "model.onnx", tmp_path / "renamed.onnx", rename)
    with pytest.raises(ExportError, match="inputs") as info:
        check_onnx(path, expected=expected_io(), reference=None)
    assert "\n" not in str(info.value)


def test_check_refuses_a_wrong_output_shape(exported: ExportResult, tmp_path: Path) -> None:
    def shrink(model: Any) -> None:
        model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = ANCHORS - 1

    path = tamper(exported.version_dir / "model.onnx", tmp_path / "shape.onnx", shrink)
    with pytest.raises(ExportError, match="output"):
        check_onnx(path, expected=expected_io(), reference=None)


def test_check_refuses_a_model_for_another_class_count(exported: ExportResult) -> None:
    with pytest.raises(ExportError, match="outputs"):
        check_onnx(exported.version_dir / "model.onnx", expected=expected_io(3), reference=None)


def test_check_refuses_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a protobuf at all")
    with pytest.raises(ExportError, match="not a valid ONNX model"):
        check_onnx(path, expected=expected_io(), reference=None)


def test_failed_check_leaves_the_output_folder_untouched(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import export.onnx_export as onnx_export

    real_export = onnx_export.export_onnx

    def export_with_renamed_input(detector: Any, dest: Path, **kwargs: Any) -> None:
        real_export(detector, dest, **kwargs)

        def rename(model: Any) -> None:
            model.graph.input[0].name = "input"
            for node in model.graph.node:
                node.input[:] = ["input" if n == "images" else n for n in node.input]

        tamper(dest, dest, rename)

    monkeypatch.setattr(onnx_export, "export_onnx", export_with_renamed_input)
    parent = tmp_path / "repo"
    with pytest.raises(ExportError):
        export_model(weights, parent / "m", model_name="m", options=options())
    assert not parent.exists()  # no model folder, no staging folder, not even the parent


# -- formats, versions, options --------------------------------------------------------------


def test_onnx_format_writes_an_onnxruntime_config_and_only_the_onnx(
    weights: Path, tmp_path: Path
) -> None:
    result = export_model(weights, tmp_path / "m", model_name="m", options=options(format="onnx"))
    assert result.config.platform == "onnxruntime_onnx"
    assert result.config.backend == ""
    assert sorted(p.name for p in result.version_dir.iterdir()) == ["manifest.json", "model.onnx"]


def test_onnx_with_tensorrt_accelerator_runs_on_gpu_instances_in_fp16(
    weights: Path, tmp_path: Path
) -> None:
    result = export_model(
        weights,
        tmp_path / "m",
        model_name="m",
        options=options(format="onnx", ort_tensorrt=True, fp16=True),
    )
    accelerators = result.config.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accelerators] == ["tensorrt"]
    assert accelerators[0].parameters["precision_mode"] == "FP16"
    assert result.config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert parse_config((tmp_path / "m" / "config.pbtxt").read_bytes(), source="t") == result.config


def test_a_second_version_joins_an_existing_model_and_keeps_its_config(
    weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m"
    export_model(weights, out, model_name="m", version="1", options=options(format="onnx"))
    config = out / "config.pbtxt"
    config.write_bytes(config.read_bytes() + b"version_policy { specific { versions: 1 } }\n")
    before = config.read_bytes()
    result = export_model(weights, out, model_name="m", version="2", options=options(format="onnx"))
    assert result.version_dir == out / "2"
    assert sorted(p.name for p in out.iterdir()) == ["1", "2", "config.pbtxt"]
    assert config.read_bytes() == before
    with pytest.raises(VersionExistsError):
        export_model(weights, out, model_name="m", version="2", options=options(format="onnx"))


def test_a_version_with_other_outputs_is_refused_by_an_existing_model(
    weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m"
    export_model(weights, out, model_name="m", version="1", options=options(format="onnx"))
    three_classes = make_untrained_detector(tmp_path / "w3" / "three.pt", nc=3)
    with pytest.raises(IncompatibleModelError):
        export_model(
            three_classes, out, model_name="m", version="2", options=options(format="onnx")
        )
    assert sorted(p.name for p in out.iterdir()) == ["1", "config.pbtxt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "w3"]


def test_plan_without_gpu_fails_at_once_with_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU refusal cannot be observed")
    # The weights do not even exist: the refusal must come before any work.
    with pytest.raises(ExportError) as info:
        export_model(
            tmp_path / "missing.pt", tmp_path / "m", model_name="m", options=options(format="plan")
        )
    assert "--format plan" in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"format": "tflite"},
        {"imgsz": 150},
        {"max_batch": 0},
        {"fp16": True},
        {"int8": True},
        {"ort_tensorrt": True},
        {"format": "onnx", "int8": True},
    ],
)
def test_bad_options_are_invalid_input(weights: Path, tmp_path: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        export_model(weights, tmp_path / "m", model_name="m", options=options(**bad))
    assert list(tmp_path.iterdir()) == []


# -- weights that must be refused --------------------------------------------------------------


def assert_one_line_naming(error: pytest.ExceptionInfo[WeightsError], path: Path) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message


def test_missing_weights_are_a_weights_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(WeightsError, match="not found") as info:
        export_model(missing, tmp_path / "m", model_name="m", options=options())
    assert_one_line_naming(info, missing)


def test_truncated_weights_are_a_weights_error(weights: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pt"
    data = weights.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated") as info:
        export_model(truncated, tmp_path / "m", model_name="m", options=options())
    assert_one_line_naming(info, truncated)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truncated.pt"]


def test_a_plain_torch_dict_is_a_weights_error(tmp_path: Path) -> None:
    import torch

    plain = tmp_path / "plain.pt"
    torch.save({"a": 1}, plain)
    with pytest.raises(WeightsError, match="no model") as info:
        export_model(plain, tmp_path / "m", model_name="m", options=options())
    assert_one_line_naming(info, plain)


@pytest.mark.parametrize(("yaml", "words"), NOT_SERVED)
def test_a_checkpoint_that_is_no_served_detector_is_a_weights_error(
    tmp_path: Path, yaml: str, words: str
) -> None:
    """Segment, pose, OBB, classify and RT-DETR: one line naming the file, what it is and
    the generations served."""
    checkpoint = untrained_checkpoint(tmp_path / "model.pt", yaml, train_args={})
    with pytest.raises(WeightsError, match=f"{words} \\(served: ") as info:
        export_model(checkpoint, tmp_path / "m", model_name="m", options=options())
    assert_one_line_naming(info, checkpoint)


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("code from a checkpoint ran",))


def test_a_checkpoint_with_foreign_objects_is_refused_unloaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    hostile = tmp_path / "hostile.pt"
    torch.save({"model": _Payload()}, hostile)
    with pytest.raises(WeightsError, match="refused unpickling"):
        export_model(hostile, tmp_path / "m", model_name="m", options=options())
    assert "code from a checkpoint ran" not in capsys.readouterr().out


def test_untrained_detector_loads_as_a_two_class_detector(weights: Path, tmp_path: Path) -> None:
    detector = load_detector(weights, tmp_path)
    assert detector.class_names == ("rectangle", "circle")
    assert detector.strides == (8, 16, 32)
    assert detector.num_anchors(IMGSZ) == ANCHORS


# -- the python backend's model.py -----------------------------------------------------------


class _FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class _FakeResponse:
    def __init__(
        self, output_tensors: list[_FakeTensor] | None = None, error: Exception | None = None
    ) -> None:
        self.output_tensors, self.error = output_tensors or [], error


def _fake_pb_utils() -> types.ModuleType:
    """The slice of ``triton_python_backend_utils`` model.py uses (pure logic only)."""
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _FakeTensor  # type: ignore[attr-defined]
    module.InferenceResponse = _FakeResponse  # type: ignore[attr-defined]
    module.TritonError = RuntimeError  # type: ignore[attr-defined]
    module.TritonModelException = RuntimeError  # type: ignore[attr-defined]
    module.triton_string_to_numpy = {"TYPE_FP32": np.float32}.__getitem__  # type: ignore[attr-defined]
    module.get_input_tensor_by_name = lambda request, name: request.get(name)  # type: ignore[attr-defined]
    return module


def load_backend(
    exported: ExportResult, monkeypatch: pytest.MonkeyPatch, parameters: dict[str, str]
) -> Any:
    """The version's model.py, initialized as Triton would with these config parameters."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    path = exported.version_dir / "model.py"
    spec = importlib.util.spec_from_file_location("exported_backend_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = json.loads(config_to_json(exported.config))
    for key, value in parameters.items():
        config["parameters"][key] = {"string_value": value}
    model.initialize(
        {
            "model_config": json.dumps(config),
            "model_repository": str(exported.model_dir),
            "model_version": "1",
        }
    )
    return model


@pytest.fixture
def backend_model(exported: ExportResult, monkeypatch: pytest.MonkeyPatch) -> Any:
    return load_backend(exported, monkeypatch, {"onnxruntime_intra_op_threads": "1"})


def test_backend_runs_a_dynamic_batch_as_one_onnxruntime_call(backend_model: Any) -> None:
    session = backend_model.session
    calls: list[int] = []
    real_run = session.run

    class CountingSession:
        def run(self, names: list[str], feed: dict[str, np.ndarray]) -> Any:
            calls.append(feed["images"].shape[0])
            return real_run(names, feed)

    backend_model.session = CountingSession()
    rng = np.random.default_rng(0)
    batches = [rng.random((n, 3, IMGSZ, IMGSZ), dtype=np.float32) for n in (1, 2, 1)]
    responses = backend_model.execute([{"images": _FakeTensor("images", b)} for b in batches])
    assert calls == [4]
    for batch, response in zip(batches, responses, strict=True):
        assert response.error is None
        (tensor,) = response.output_tensors
        assert tensor.name == "output0"
        (alone,) = real_run(["output0"], {"images": batch})
        np.testing.assert_allclose(tensor.array, alone, rtol=1e-4, atol=1e-3)


def test_backend_refuses_a_bad_request_without_failing_its_batch_mates(backend_model: Any) -> None:
    good = np.zeros((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    wrong = np.zeros((1, 3, 32, 32), dtype=np.float32)
    responses = backend_model.execute(
        [
            {"images": _FakeTensor("images", good)},
            {"images": _FakeTensor("images", wrong)},
            {},
        ]
    )
    assert responses[0].error is None
    assert responses[0].output_tensors[0].array.shape == (1, 6, ANCHORS)
    assert "shape" in str(responses[1].error)
    assert "missing input" in str(responses[2].error)


def test_backend_takes_thread_counts_from_the_config(backend_model: Any) -> None:
    assert backend_model.session.get_session_options().intra_op_num_threads == 1


def test_the_servers_environment_gives_a_parameters_default_and_the_config_wins(
    exported: ExportResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPO_MANAGER_ONNXRUNTIME_INTRA_OP_THREADS", "3")
    from_env = load_backend(exported, monkeypatch, {})
    assert from_env.session.get_session_options().intra_op_num_threads == 3
    configured = load_backend(exported, monkeypatch, {"onnxruntime_intra_op_threads": "2"})
    assert configured.session.get_session_options().intra_op_num_threads == 2


# -- generated data and the package's import cost -------------------------------------------


def test_shapes_image_is_deterministic_and_boxes_lie_inside(tmp_path: Path) -> None:
    a = generate_shapes_image(imgsz=IMGSZ, seed=7)
    b = generate_shapes_image(imgsz=IMGSZ, seed=7)
    assert a.image.shape == (IMGSZ, IMGSZ, 3) and a.image.dtype == np.uint8
    np.testing.assert_array_equal(a.image, b.image)
    assert len(a.boxes) == len(a.classes) >= 1
    assert set(a.classes.tolist()) <= {0, 1}
    assert (a.boxes >= 0).all() and (a.boxes <= IMGSZ).all()
    assert (a.boxes[:, 2:] > a.boxes[:, :2]).all()


def test_shapes_dataset_is_written_in_yolo_layout(tmp_path: Path) -> None:
    data = generate_shapes_dataset(tmp_path / "ds", 4, IMGSZ, 0, n_val=2)
    assert data.name == "data.yaml"
    assert len(list((tmp_path / "ds" / "images" / "train").glob("*.png"))) == 4
    assert len(list((tmp_path / "ds" / "images" / "val").glob("*.png"))) == 2
    labels = sorted((tmp_path / "ds" / "labels" / "train").glob("*.txt"))
    assert len(labels) == 4
    for line in labels[0].read_text().splitlines():
        cls, *box = line.split()
        assert cls in {"0", "1"} and all(0.0 <= float(v) <= 1.0 for v in box)


def test_fine_tuned_recipes_start_from_a_recipe_trained_from_scratch() -> None:
    bases = {r.fine_tune for r in RECIPES.values() if r.fine_tune is not None}
    assert bases and all(RECIPES[b].fine_tune is None for b in bases)
    with pytest.raises(ValueError, match="epochs and images"):
        Recipe(epochs=0)


def test_importing_export_loads_neither_torch_nor_ultralytics() -> None:
    code = (
        "import sys, export; "
        "assert not {'torch', 'ultralytics', 'onnx'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=BACKEND_FILE.parents[2])


def test_a_new_models_default_is_end_to_end_with_its_lineage_in_the_manifest(
    weights: Path, tmp_path: Path
) -> None:
    """YOLOv8n into the end-to-end contract: NMS inside the graph, [B, 300, 6] out."""
    options = ExportOptions(imgsz=IMGSZ, max_batch=4, export_cache=None)
    result = export_model(weights, tmp_path / "m", model_name="m", options=options)
    assert [list(o.dims) for o in result.config.output] == [[300, 6]]
    assert result.config.parameters["contract"].string_value == "end2end"
    manifest = result.manifest
    assert (manifest["contract"], manifest["head_mode"]) == ("end2end", "nms")
    assert manifest["lineage"]["generation"] == "yolov8"
    assert manifest["lineage"]["head"] == "Detect"
    assert manifest["lineage"]["train_args"] == {"imgsz": 640, "model": "yolov8n.yaml"}
    assert manifest["lineage"]["ultralytics_version"]
