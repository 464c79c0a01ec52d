"""Which export settings a version gets: given, else the model's config, else the
checkpoint's training size, else the default; a real mismatch named in words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from export.settings import ServedSettings, choose_export_options
from export.tiny_detector import make_untrained_detector
from export.weights import load_detector, trained_imgsz
from repo_manager.compat import io_difference
from repo_manager.errors import IncompatibleModelError
from repo_manager.modelconfig import TensorSpec, build_detector_config

NOTHING_GIVEN: dict[str, Any] = {
    "format": None,
    "imgsz": None,
    "max_batch": None,
    "instances": None,
}


def served(*, imgsz: int = 160, max_batch: int = 4, classes: int = 2, **extra: Any) -> Any:
    """A detector config as the first publish writes it (160 px, max batch 4, python)."""
    anchors = sum((imgsz // s) ** 2 for s in (8, 16, 32))
    return build_detector_config(
        name="yolov8s.versions",
        backend_or_platform=extra.get("backend", "python"),
        max_batch_size=max_batch,
        inputs=[TensorSpec(name="images", data_type="TYPE_FP32", dims=(3, imgsz, imgsz))],
        outputs=[TensorSpec(name="output0", data_type="TYPE_FP32", dims=(4 + classes, anchors))],
        instance_kind="KIND_CPU",
        instance_count=extra.get("instances", 1),
        class_names=[f"c{i}" for i in range(classes)],
        imgsz=imgsz,
    )


def test_a_later_version_inherits_size_batch_format_and_instances_from_the_model() -> None:
    chosen = choose_export_options(NOTHING_GIVEN, served(instances=2), model="yolov8s")
    options = chosen.options
    assert (options.format, options.imgsz, options.max_batch, options.instances) == (
        "python",
        160,
        4,
        2,
    )
    assert set(chosen.sources.values()) == {"yolov8s's config"}
    assert "imgsz 160 (yolov8s's config)" in chosen.describe()


def test_a_given_setting_that_differs_from_the_model_is_refused_in_words() -> None:
    given = {**NOTHING_GIVEN, "imgsz": 640, "max_batch": 8}
    with pytest.raises(IncompatibleModelError) as refused:
        choose_export_options(given, served(), model="yolov8s")
    message = str(refused.value)
    assert "imgsz 640, the model serves 160" in message
    assert "max batch 8, the model serves 4" in message
    assert "(" not in message.split(":")[1].split(";")[0]  # words, not a dump of tuples


def test_a_given_setting_equal_to_the_model_is_taken_as_given() -> None:
    chosen = choose_export_options({**NOTHING_GIVEN, "imgsz": 160}, served(), model="m")
    assert chosen.options.imgsz == 160 and chosen.sources["imgsz"] == "given"


def test_a_first_version_leaves_the_size_to_the_checkpoint_and_the_rest_to_defaults() -> None:
    chosen = choose_export_options(NOTHING_GIVEN, None, model="m")
    options = chosen.options
    assert options.imgsz is None and chosen.sources["imgsz"] == "checkpoint"
    assert (options.format, options.max_batch, options.instances) == ("python", 8, 1)


def test_served_settings_read_the_format_of_each_backend() -> None:
    assert ServedSettings.of(served()).format == "python"
    assert ServedSettings.of(served(backend="onnxruntime_onnx")).format == "onnx"
    assert ServedSettings.of(served(backend="tensorrt_plan")).format == "plan"


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [(160, 160), ([160, 160], 160), ([320], 320), ([320, 160], None), (100, None), (None, None)],
)
def test_the_training_size_is_read_only_when_square_and_a_multiple_of_32(
    recorded: Any, expected: int | None
) -> None:
    args = {} if recorded is None else {"imgsz": recorded}
    assert trained_imgsz({"train_args": args}) == expected


def test_a_loaded_checkpoint_carries_its_training_size(tmp_path: Path) -> None:
    weights = make_untrained_detector(tmp_path / "w.pt")  # records train_args.imgsz 640
    assert load_detector(weights, tmp_path).train_imgsz == 640


def test_io_difference_names_size_batch_and_classes_in_words() -> None:
    current = served()
    assert io_difference(served(), current) == ""
    assert io_difference(served(imgsz=640), current) == "imgsz 640, the model serves 160"
    assert io_difference(served(max_batch=8), current) == "max batch 8, the model serves 4"
    assert io_difference(served(classes=80), current).startswith("80 classes, the model serves 2")


def test_an_export_without_a_size_takes_the_checkpoints_training_size(tmp_path: Path) -> None:
    from export import ExportOptions, export_model

    weights = make_untrained_detector(tmp_path / "w.pt", imgsz=160)
    result = export_model(weights, tmp_path / "m", model_name="m", options=ExportOptions())
    assert result.manifest["imgsz"] == 160
    assert list(result.config.input[0].dims) == [3, 160, 160]
    assert result.config.parameters["imgsz"].string_value == "160"
