"""The served contract: what a model's output means, stated in its config, inherited by
every later version, refused in one line when a version would change it; and what
Ultralytics' own client reads from the metadata of each contract."""

from __future__ import annotations

import ast
import json
from typing import Any

import numpy as np
import pytest

from export.settings import ServedSettings, choose_export_options
from repo_manager.compat import io_difference
from repo_manager.contract import (
    END2END,
    NMS_IN_GRAPH,
    ONE2MANY,
    ONE2ONE,
    RAW,
    bytes_per_image,
    check_contract,
    contract_of,
    head_mode,
    output_dims,
)
from repo_manager.errors import IncompatibleModelError, InvalidInputError
from repo_manager.modelconfig import (
    ModelConfig,
    TensorSpec,
    build_alias_config,
    build_detector_config,
    public_config_base,
)
from repo_manager.yolo import decode_end2end

NOTHING_GIVEN: dict[str, Any] = {
    "format": None,
    "contract": None,
    "imgsz": None,
    "max_batch": None,
    "instances": None,
}


def detector_config(*, contract: str = END2END, classes: int = 2, imgsz: int = 160) -> ModelConfig:
    anchors = sum((imgsz // s) ** 2 for s in (8, 16, 32))
    dims = output_dims(contract, num_classes=classes, num_anchors=anchors)
    return build_detector_config(
        name="shapes.versions",
        backend_or_platform="python",
        max_batch_size=4,
        inputs=[TensorSpec(name="images", data_type="TYPE_FP32", dims=(3, imgsz, imgsz))],
        outputs=[TensorSpec(name="output0", data_type="TYPE_FP32", dims=dims)],
        instance_kind="KIND_CPU",
        instance_count=1,
        class_names=[f"c{i}" for i in range(classes)],
        imgsz=imgsz,
        contract=contract,
    )


def metadata(config: ModelConfig) -> dict[str, Any]:
    document: dict[str, Any] = ast.literal_eval(config.parameters["metadata"].string_value)
    return document


def test_an_80_class_model_at_640_sends_7_kb_end_to_end_instead_of_2_8_mb_raw() -> None:
    assert bytes_per_image(RAW, num_classes=80, imgsz=640) == 84 * 8400 * 4 == 2_822_400
    assert bytes_per_image(END2END, num_classes=80, imgsz=640) == 300 * 6 * 4 == 7_200


def test_end_to_end_dims_do_not_depend_on_the_class_count_raw_dims_do() -> None:
    assert output_dims(END2END, num_classes=2, num_anchors=525) == (300, 6)
    assert output_dims(END2END, num_classes=3, num_anchors=525) == (300, 6)
    assert output_dims(END2END, num_classes=3, num_anchors=84) == (84, 6)  # K <= anchors
    assert output_dims(RAW, num_classes=3, num_anchors=525) == (7, 525)


def test_each_generation_takes_its_head_mode_in_each_contract() -> None:
    assert head_mode(RAW, has_one2one_head=True) == ONE2MANY  # YOLO26 in a raw model
    assert head_mode(RAW, has_one2one_head=False) == ONE2MANY
    assert head_mode(END2END, has_one2one_head=True) == ONE2ONE  # YOLOv10, YOLO26
    assert head_mode(END2END, has_one2one_head=False) == NMS_IN_GRAPH  # v3u ... 12


def test_a_config_without_the_parameter_is_raw_as_every_model_published_before() -> None:
    config = detector_config(contract=RAW)
    del config.parameters["contract"]
    assert contract_of(config) == RAW
    assert contract_of(detector_config()) == END2END
    with pytest.raises(InvalidInputError, match="contract must be one of raw, end2end"):
        check_contract("nms")


def test_a_new_model_is_end_to_end_and_a_later_version_inherits_the_models_contract() -> None:
    first = choose_export_options(NOTHING_GIVEN, None, model="shapes")
    assert first.options.contract == END2END and first.sources["contract"] == "default"
    later = choose_export_options(NOTHING_GIVEN, detector_config(contract=RAW), model="shapes")
    assert later.options.contract == RAW and later.sources["contract"] == "shapes's config"
    assert ServedSettings.of(detector_config()).contract == END2END


def test_moving_a_model_to_another_contract_is_refused_in_one_line() -> None:
    given = {**NOTHING_GIVEN, "contract": END2END}
    with pytest.raises(IncompatibleModelError) as refused:
        choose_export_options(given, detector_config(contract=RAW), model="shapes")
    message = str(refused.value)
    assert "\n" not in message
    assert "contract end2end, the model serves raw" in message
    assert "publish under a new name" in message


def test_a_version_with_another_class_count_fits_only_an_end_to_end_model() -> None:
    assert io_difference(detector_config(classes=3), detector_config(classes=2)) == ""
    raw = io_difference(detector_config(contract=RAW, classes=3), detector_config(contract=RAW))
    assert raw.startswith("3 classes, the model serves 2")
    assert "raw contract's output grows with the class count; end2end's does not" in raw
    across = io_difference(detector_config(), detector_config(contract=RAW))
    assert across.startswith("contract end2end, the model serves raw")


def test_ultralytics_reads_one_image_batches_and_end2end_from_the_metadata() -> None:
    """AutoBackend pads a non-dynamic model's requests up to ``batch`` (8 gave 48
    inferences for 6 images): ``batch`` 1 sends each image once; ``end2end`` skips NMS."""
    e2e, raw = metadata(detector_config()), metadata(detector_config(contract=RAW))
    assert e2e["batch"] == 1 and e2e["args"] == {"batch": 1, "dynamic": False, "nms": False}
    assert e2e["end2end"] is True and raw["end2end"] is False
    assert e2e["names"] == {0: "c0", 1: "c1"} and e2e["imgsz"] == [160, 160]


def test_the_public_name_carries_the_class_names_of_the_version_it_answers_from() -> None:
    target = detector_config(classes=2)
    alias = build_alias_config(
        name="shapes",
        target_name="shapes.versions",
        target=target,
        version="4",
        class_names=["c0", "c1", "triangle"],
    )
    assert json.loads(alias.parameters["class_names"].string_value) == ["c0", "c1", "triangle"]
    assert metadata(alias)["names"] == {0: "c0", 1: "c1", 2: "triangle"}
    assert metadata(alias)["end2end"] is True
    assert list(alias.output[0].dims) == list(target.output[0].dims)  # one shape throughout
    unchanged = public_config_base(name="shapes", target=target)
    assert unchanged.parameters["metadata"] == target.parameters["metadata"]


def test_end_to_end_rows_are_filtered_by_confidence_and_need_no_nms() -> None:
    rows = np.zeros((1, 5, 6), np.float32)
    rows[0, 0] = [10, 10, 20, 20, 0.9, 2]
    rows[0, 1] = [11, 10, 21, 20, 0.8, 2]  # overlapping: the graph already decided to keep it
    rows[0, 2] = [0, 0, 5, 5, 0.1, 0]
    [(boxes, scores, classes)] = decode_end2end(rows, conf=0.25)
    np.testing.assert_allclose(boxes, [[10, 10, 20, 20], [11, 10, 21, 20]])
    assert scores.tolist() == pytest.approx([0.9, 0.8]) and classes.tolist() == [2, 2]
    [(_, everything, _)] = decode_end2end(rows, conf=0.0, max_det=2)
    assert len(everything) == 2  # zero rows are padding, never detections
    with pytest.raises(ValueError, match=r"\[B, K, 6\]"):
        decode_end2end(np.zeros((1, 6, 84), np.float32))


def test_a_weighted_public_name_over_a_canary_with_other_classes_is_refused() -> None:
    from repo_manager.unpinned import check_weighted_classes

    two, three = ("rectangle", "circle"), ("rectangle", "circle", "triangle")
    check_weighted_classes("shapes", ("2", two), ("3", two))  # same classes: fine
    check_weighted_classes("shapes", ("2", two), ("3", None))  # unknown: not judged
    with pytest.raises(InvalidInputError) as refused:
        check_weighted_classes("shapes", ("2", two), ("4", three))
    message = str(refused.value)
    assert "canary 4 names other classes than stable 2 (adds triangle)" in message
    assert "\n" not in message
