"""Router.detect with a fake client: letterbox, decode, NMS and class names from the config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2

from repo_manager.errors import InvalidInputError, TritonError
from tests.unit.routing_fakes import MODEL, make_router


def yolo_config(**params: str) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig(name=MODEL, max_batch_size=8)
    config.input.add(name="images", data_type=model_config_pb2.TYPE_FP32, dims=[3, 64, 64])
    config.output.add(name="output0", data_type=model_config_pb2.TYPE_FP32, dims=[6, 84])
    for k, v in params.items():
        config.parameters[k].string_value = v
    return config


def test_detect_maps_decoded_boxes_back_to_the_original_image(repo: Path) -> None:
    config = yolo_config(class_names=json.dumps(["circle", "square"]))
    router, [client] = make_router(repo, config=config)
    # A 128x64 (w x h) image letterboxes into 64x64 at scale 0.5 with 16 rows of padding.
    raw = np.zeros((1, 6, 84), np.float32)
    raw[0, :, 0] = [32, 32, 16, 8, 0.1, 0.95]  # square centred in the letterboxed input
    raw[0, :, 1] = [33, 32, 16, 8, 0.1, 0.60]  # overlapping duplicate: suppressed
    client.outputs = {"output0": raw}
    with router:
        found = router.detect(np.zeros((64, 128, 3), np.uint8), version="2")
    assert found.version == "2" and len(found) == 1
    np.testing.assert_allclose(found.boxes, [[48, 24, 80, 40]])
    assert found.labels == ["square"] and found.names == {0: "circle", 1: "square"}


def test_detect_reads_size_and_names_from_parameters_when_dims_are_dynamic(repo: Path) -> None:
    config = yolo_config(imgsz="[32, 48]", class_names=json.dumps({"0": "a", "1": "b"}))
    config.input[0].dims[:] = [3, -1, -1]
    router, [client] = make_router(repo, config=config)
    client.outputs = {"output0": np.zeros((1, 6, 10), np.float32)}
    with router:
        found = router.detect(np.zeros((10, 10, 3), np.uint8))
        spec = router._detector.spec()
    assert spec.size == (32, 48) and spec.class_names == ("a", "b") and len(found) == 0


def test_detect_rejects_images_that_are_not_hxwx3_uint8(repo: Path) -> None:
    router, _ = make_router(repo, config=yolo_config())
    with router:
        with pytest.raises(InvalidInputError, match="HxWx3"):
            router.detect(np.zeros((10, 10), np.uint8))
        with pytest.raises(InvalidInputError, match="uint8"):
            router.detect(np.zeros((10, 10, 3), np.float32))
        for empty in ((0, 0, 3), (0, 10, 3), (10, 0, 3)):
            with pytest.raises(InvalidInputError, match="non-empty"):
                router.detect(np.zeros(empty, np.uint8))


def test_detect_refuses_a_model_whose_input_is_not_an_image(repo: Path) -> None:
    config = yolo_config()
    config.input[0].dims[:] = [4]
    router, _ = make_router(repo, config=config)
    with router, pytest.raises(TritonError, match="not \\[3, H, W\\]"):
        router.detect(np.zeros((10, 10, 3), np.uint8))


def write_manifest(repo: Path, version: str, class_names: list[str]) -> None:
    folder = repo / f"{MODEL}.versions" / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"class_names": class_names}))


def end2end_config(**params: str) -> model_config_pb2.ModelConfig:
    config = yolo_config(contract="end2end", **params)
    config.output[0].dims[:] = [84, 6]
    return config


def test_each_version_names_its_own_classes_from_its_manifest(repo: Path) -> None:
    """A canary that adds a class (``triangle``) names it; stable keeps its own names;
    a version without a readable manifest falls back to the config's."""
    write_manifest(repo, "1", ["rectangle", "circle"])
    write_manifest(repo, "2", ["rectangle", "circle", "triangle"])
    config = end2end_config(class_names=json.dumps(["rectangle", "circle"]))
    router, [client] = make_router(repo, config=config)
    rows = np.zeros((1, 84, 6), np.float32)
    rows[0, 0] = [8, 8, 24, 24, 0.9, 2]
    rows[0, 1] = [30, 30, 50, 50, 0.7, 1]
    client.outputs = {"output0": rows}
    with router:
        canary = router.detect(np.zeros((64, 64, 3), np.uint8), version="2")
        stable = router.detect(np.zeros((64, 64, 3), np.uint8), version="1")
        unknown = router.detect(np.zeros((64, 64, 3), np.uint8), version="3")
    assert canary.labels == ["triangle", "circle"] and len(canary.names) == 3
    assert stable.labels == ["2", "circle"]  # stable has no class 2: its id, not a guess
    assert unknown.class_names == ("rectangle", "circle")
    np.testing.assert_allclose(canary.boxes[0], [8, 8, 24, 24])  # no NMS, no xywh


def test_shadow_agreement_compares_classes_by_name_and_counts_new_ones_apart(
    repo: Path,
) -> None:
    """The canary orders its classes otherwise and knows one more: same-named boxes match,
    its ``triangle`` is counted apart, never as a disagreement."""
    from repo_manager.metrics import ShadowMetrics
    from repo_manager.routing.detection import DetectorSpec

    write_manifest(repo, "1", ["rectangle", "circle"])
    write_manifest(repo, "2", ["circle", "rectangle", "triangle"])
    router, _ = make_router(repo, config=end2end_config())
    with router:
        names_of = router._detector.names_of
        spec = DetectorSpec.from_config(end2end_config())
        request = spec.request(
            np.zeros((64, 64, 3), np.uint8),
            model=MODEL,
            conf=0.25,
            iou=0.7,
            max_det=300,
            names_of=names_of,
        )
        stable_found = (
            np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32),
            np.array([0.9, 0.8], np.float32),
            np.array([0, 1]),  # rectangle, circle
        )
        rows = np.zeros((1, 84, 6), np.float32)
        rows[0, 0] = [0, 0, 10, 10, 0.9, 1]  # rectangle in the canary's numbering
        rows[0, 1] = [20, 20, 40, 40, 0.8, 0]  # circle
        rows[0, 2] = [45, 45, 60, 60, 0.7, 2]  # triangle: stable has no such class

        class Answer:
            def as_numpy(self, name: str) -> np.ndarray:
                return rows

        counts = ShadowMetrics(MODEL, "2")
        request.comparison(stable_found, "1")(Answer(), counts)
    values = counts.snapshot()
    assert (values["boxes_reference"], values["boxes_shadow"]) == (2, 2)
    assert (values["boxes_matched"], values["boxes_new_class"]) == (2, 1)
