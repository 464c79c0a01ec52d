"""YOLOv8 pre/post-processing in numpy: letterbox geometry, resize, decode and NMS."""

from __future__ import annotations

import numpy as np
import pytest

from repo_manager import yolo


def _raw_output(rows: list[tuple[float, float, float, float, list[float]]]) -> np.ndarray:
    """A ``[1, 4+nc, N]`` output from (cx, cy, w, h, class scores) rows."""
    table = np.array([[cx, cy, w, h, *scores] for cx, cy, w, h, scores in rows], np.float32)
    return table.T[None]


def test_letterbox_keeps_aspect_and_centres_with_grey_padding() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    padded, info = yolo.letterbox(image, (640, 640))
    assert padded.shape == (640, 640, 3)
    assert info.scale == 1.0 and (info.pad_left, info.pad_top) == (0, 80)
    assert (padded[:80] == yolo.PAD_VALUE).all() and (padded[560:] == yolo.PAD_VALUE).all()
    assert (padded[80:560] == 0).all()


def test_letterbox_puts_odd_padding_pixel_bottom_right_like_ultralytics() -> None:
    padded, info = yolo.letterbox(np.zeros((9, 31, 3), np.uint8), (32, 31))
    # 23 rows of padding: 11 above, 12 below (Ultralytics rounds dh - 0.1 / dh + 0.1).
    assert (info.pad_top, info.pad_left, info.scale) == (11, 0, 1.0)
    rows = np.nonzero((padded != yolo.PAD_VALUE).any(axis=(1, 2)))[0]
    assert (rows.min(), rows.max()) == (11, 19)
    _, info = yolo.letterbox(np.zeros((31, 9, 3), np.uint8), (31, 32))
    assert (info.pad_top, info.pad_left) == (0, 11)


@pytest.mark.parametrize("shape", [(480, 640), (720, 1280), (333, 222), (50, 50)])
def test_box_drawn_in_original_survives_letterbox_and_scale_back(shape: tuple[int, int]) -> None:
    h, w = shape
    image = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = int(w * 0.2), int(h * 0.3), int(w * 0.7), int(h * 0.9)
    image[y1:y2, x1:x2] = 255
    padded, info = yolo.letterbox(image, (320, 320))
    ys, xs = np.nonzero(padded[..., 0] > 127)
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    back = yolo.scale_boxes(found, info)[0]
    tolerance = 1.5 / info.scale + 0.5  # one letterbox pixel of blur, in original pixels
    np.testing.assert_allclose(back, [x1, y1, x2, y2], atol=tolerance)


def test_scale_boxes_clips_to_the_original_image() -> None:
    info = yolo.LetterboxInfo(scale=0.5, pad_left=0, pad_top=10, orig_shape=(100, 200))
    out = yolo.scale_boxes(np.array([[-5.0, 0.0, 150.0, 70.0]]), info)
    np.testing.assert_allclose(out, [[0.0, 0.0, 200.0, 100.0]])


def test_numpy_resize_matches_opencv_within_one_grey_level() -> None:
    cv2 = pytest.importorskip(
        "cv2", reason="OpenCV not installed (pip install 'opencv-python-headless<4.12')"
    )
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    for size in [(64, 80), (200, 150), (97, 131)]:
        ours = yolo.resize_bilinear(image, *size).astype(int)
        theirs = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR).astype(int)
        assert np.abs(ours - theirs).max() <= 1


def test_letterbox_works_without_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yolo, "_cv2_checked", True)
    monkeypatch.setattr(yolo, "_cv2", None)
    image = np.full((40, 80, 3), 200, np.uint8)
    padded, info = yolo.letterbox(image, (32, 32))
    assert info.scale == 0.4 and info.pad_top == 8
    assert (padded[8:24] == 200).all() and (padded[:8] == yolo.PAD_VALUE).all()


def test_preprocess_gives_rgb_chw_in_unit_range() -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    image[..., 0] = 255  # blue in BGR
    tensor, _ = yolo.preprocess(image, (16, 16))
    assert tensor.shape == (1, 3, 16, 16) and tensor.dtype == np.float32
    assert tensor[0, 2].min() == 1.0 and tensor[0, :2].max() == 0.0
    half, _ = yolo.preprocess(image, (16, 16), np.float16)
    assert half.dtype == np.float16


def test_decode_converts_centre_xywh_to_xyxy_and_picks_best_class() -> None:
    raw = _raw_output([(50, 40, 20, 10, [0.1, 0.9, 0.2])])
    [(boxes, scores, class_ids)] = yolo.decode(raw, conf=0.25)
    np.testing.assert_allclose(boxes, [[40, 35, 60, 45]])
    np.testing.assert_allclose(scores, [0.9])
    assert class_ids.tolist() == [1]


def test_decode_drops_scores_at_or_below_conf() -> None:
    raw = _raw_output([(10, 10, 5, 5, [0.25, 0.1]), (30, 30, 5, 5, [0.3, 0.1])])
    [(boxes, scores, _)] = yolo.decode(raw, conf=0.25)
    assert len(scores) == 1 and boxes[0, 0] == pytest.approx(27.5)


def test_nms_suppresses_overlaps_of_one_class_but_not_across_classes() -> None:
    raw = _raw_output(
        [
            (50, 50, 20, 20, [0.9, 0.0]),  # kept: best of class 0
            (51, 51, 20, 20, [0.8, 0.0]),  # IoU ~0.82 with the first: suppressed
            (50, 50, 20, 20, [0.0, 0.7]),  # same place, other class: kept
            (150, 150, 20, 20, [0.6, 0.0]),  # class 0, far away: kept
        ]
    )
    [(_, scores, class_ids)] = yolo.decode(raw, conf=0.25, iou=0.45)
    np.testing.assert_allclose(scores, [0.9, 0.7, 0.6])
    assert class_ids.tolist() == [0, 1, 0]


def test_nms_keeps_a_box_whose_iou_is_below_the_threshold() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float32)  # IoU = 50 / 150 = 1/3
    assert yolo.nms(boxes, np.array([0.9, 0.8]), 0.34).tolist() == [0, 1]
    assert yolo.nms(boxes, np.array([0.9, 0.8]), 0.33).tolist() == [0]


def test_decode_handles_batches_empty_results_and_max_det() -> None:
    crowd = [(float(10 + 30 * i), 10.0, 5.0, 5.0, [0.5 + i / 100]) for i in range(10)]
    raw = np.concatenate([_raw_output(crowd), _raw_output([(1, 1, 1, 1, [0.01])] * 10)])
    first, second = yolo.decode(raw, conf=0.25, max_det=3)
    assert len(first[1]) == 3 and first[1][0] == pytest.approx(0.59)
    assert second[0].shape == (0, 4) and second[2].dtype == np.int64


def test_decode_rejects_a_tensor_that_is_not_yolov8_shaped() -> None:
    with pytest.raises(ValueError, match="4\\+nc"):
        yolo.decode(np.zeros((1, 4, 10), np.float32))
