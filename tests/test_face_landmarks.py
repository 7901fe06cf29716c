"""Landmarkers: dlib on real demo frames, InsightFace's numpy pre/post-processing on
hand-made inputs (the official ONNX models are not available here)."""

from __future__ import annotations

from types import SimpleNamespace

import av
import numpy as np
import pytest

from fastsync.errors import CheckpointError
from fastsync.face import insightface_backend as ifb
from fastsync.face.dlib_backend import DlibLandmarker, points3_from_68
from fastsync.face.landmarks import FaceResult, Landmarker, make_landmarker


@pytest.fixture(scope="module")
def demo_frames(assets_dir):
    frames = []
    with av.open(str(assets_dir / "demo1_video.mp4")) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % 12 == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == 3:
                break
    return frames


@pytest.fixture(scope="module")
def dlib_landmarker():
    return DlibLandmarker()


def test_dlib_finds_one_face_with_plausible_points(demo_frames, dlib_landmarker):
    results = dlib_landmarker.detect_batch(demo_frames)
    for result in results:
        assert isinstance(result, FaceResult) and result.num_faces == 1
        x1, y1, x2, y2 = result.bbox
        (lx, ly), (rx, ry), (nx, ny) = result.points3
        assert np.all(result.points3 == np.round(result.points3))
        for x, y in result.points3:
            assert x1 <= x <= x2 and y1 <= y <= y2
        assert lx < rx
        assert ny > max(ly, ry)
        assert lx < nx < rx


def test_dlib_sees_nothing_in_blank_or_noise(dlib_landmarker):
    rng = np.random.default_rng(0)
    assert dlib_landmarker.detect(np.zeros((480, 640, 3), np.uint8)) is None
    assert dlib_landmarker.detect(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) is None


def test_points3_from_68_uses_the_10_scheme():
    points = np.zeros((68, 2))
    points[17:22] = [10, 20]
    points[22:27] = [30, 20]
    points[27:36] = [20, 40]
    points[27] = [20 + 4.5 * 9, 40]  # mean x 24.5 -> rounds half to even: 24
    np.testing.assert_array_equal(points3_from_68(points), [[10, 20], [30, 20], [24, 40]])


def test_make_landmarker_picks_and_reports(tmp_path):
    auto = make_landmarker("auto", tmp_path)
    assert isinstance(auto, Landmarker) and auto.name == "dlib-68"
    with pytest.raises(CheckpointError, match="det_10g.onnx"):
        make_landmarker("insightface", tmp_path)
    with pytest.raises(ValueError):
        make_landmarker("mediapipe", tmp_path)


# -- InsightFace helpers -----------------------------------------------------------------------

def test_anchor_centres_are_row_major_with_adjacent_anchors():
    centres = ifb.anchor_centers(2, 3, 8, 2)
    assert centres.shape == (12, 2) and centres.dtype == np.float32
    np.testing.assert_array_equal(centres[:6], [[0, 0], [0, 0], [8, 0], [8, 0], [16, 0], [16, 0]])
    np.testing.assert_array_equal(centres[6], [0, 8])


def test_distance_decoding():
    centres = np.array([[16.0, 32.0]], np.float32)
    np.testing.assert_array_equal(ifb.distance_to_bbox(centres, np.array([[1.0, 2, 3, 4]])), [[15, 30, 19, 36]])
    points = ifb.distance_to_points(centres, np.array([[1.0, -1, 0, 2]]))
    np.testing.assert_array_equal(points, [[[17, 31], [16, 34]]])


def test_nms_keeps_best_and_disjoint_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 4]], np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.6], np.float32)
    # box 0 overlaps box 1 (IoU 0.71 > 0.4); box 3 overlaps box 1 by 40 / 136 = 0.29 (+1 areas)
    assert ifb.nms(boxes, scores, 0.4) == [1, 2, 3]


def test_letterbox_and_blob():
    frame = np.zeros((960, 540, 3), np.uint8)
    frame[..., 0] = 255  # red
    canvas, scale = ifb.letterbox(frame, 512)
    assert canvas.shape == (512, 512, 3) and scale == 512 / 960
    assert canvas[:, :288].min() == 0 and canvas[0, 0, 0] == 255 and canvas[:, 288:].max() == 0
    blob = ifb.make_blob(canvas, 127.5, 128.0)
    assert blob.shape == (1, 3, 512, 512) and blob.dtype == np.float32
    assert blob[0, 2, 0, 0] == pytest.approx((255 - 127.5) / 128)  # red moved to the last channel
    assert blob[0, 0, 0, 0] == pytest.approx(-127.5 / 128)


def test_landmark_crop_transform_round_trip():
    bbox = (200.0, 100.0, 400.0, 360.0)
    matrix = ifb.landmark_crop_matrix(bbox, 192)
    centre = matrix @ np.array([300.0, 230.0, 1.0])
    np.testing.assert_allclose(centre, [96, 96])
    assert matrix[0, 0] == pytest.approx(192 / (260 * 1.5))
    prediction = np.zeros(212, np.float32)
    prediction[0:2] = [0.5, -0.25]
    points = ifb.decode_landmarks(prediction, matrix, 192)
    assert points.shape == (106, 2)
    np.testing.assert_allclose(points[1], [300, 230], atol=1e-4)
    np.testing.assert_allclose(points[0], [300 + 0.5 * 96 / matrix[0, 0], 230 - 0.25 * 96 / matrix[0, 0]], atol=1e-3)


def test_points3_from_106_rounds_twice():
    lmk = np.zeros((106, 2), np.float32)
    lmk[ifb.LEFT_BROW_106] = [[10.4, 5], [10.6, 5], [11, 5], [11, 5], [11, 5]]  # rounded: 10, 11, 11, 11, 11
    lmk[ifb.RIGHT_BROW_106] = [40.0, 5]
    lmk[ifb.NOSE_106] = [[20, 30], [21, 30], [20, 30], [21, 30]]  # mean 20.5 -> 20 (half to even)
    np.testing.assert_array_equal(ifb.points3_from_106(lmk), [[11, 5], [40, 5], [20, 30]])


def test_pick_largest_valid_applies_the_reference_filter():
    boxes = np.array([[0, 0, 60, 79.9], [0, 0, 100, 120], [0, 0, 300, 150], [0, 0, 150, 200]], np.float32)
    scores = np.array([0.9, 0.9, 0.9, 0.9], np.float32)  # too short / ok / too wide / ok and larger
    assert ifb.pick_largest_valid(boxes, scores) == (3, 2)
    assert ifb.pick_largest_valid(boxes[:1], scores[:1]) == (None, 0)
    # near a point: the valid face whose box centre is nearest (box 1's centre is (50, 60))
    assert ifb.pick_largest_valid(boxes, scores, near=(40, 50)) == (1, 2)
    assert ifb.pick_largest_valid(boxes, scores, near=(80, 110)) == (3, 2)
    assert ifb.pick_largest_valid(boxes, scores, near=(30, 40)) == (1, 2)  # box 0 is nearer, but too short
    assert ifb.pick_largest_valid(boxes[:1], scores[:1], near=(30, 40)) == (None, 0)


class _FakeSession:
    def __init__(self, input_shape, outputs, check):
        self.input_shape, self.outputs, self.check = input_shape, outputs, check

    def get_inputs(self):
        return [SimpleNamespace(name="input", shape=self.input_shape)]

    def get_outputs(self):
        return [SimpleNamespace(name=f"out{i}") for i in range(len(self.outputs))]

    def run(self, names, feed):
        self.check(feed["input"])
        return self.outputs


def _det10g_outputs():
    """One face at stride 32, a weaker duplicate at stride 16 (suppressed by NMS) and a
    tiny face at stride 8 (too small), for a 640x480 frame (canvas scale 0.8)."""
    outputs = []
    for stride in (8, 16, 32):
        cells = (512 // stride) ** 2 * 2
        outputs.append(np.zeros((cells, 1), np.float32))
    for stride in (8, 16, 32):
        outputs.append(np.zeros(((512 // stride) ** 2 * 2, 4), np.float32))
    for stride in (8, 16, 32):
        outputs.append(np.zeros(((512 // stride) ** 2 * 2, 10), np.float32))

    def put(level, stride, cx, cy, score, box):
        index = ((cy // stride) * (512 // stride) + cx // stride) * 2
        outputs[level][index] = score
        x1, y1, x2, y2 = box
        outputs[3 + level][index] = np.array([cx - x1, cy - y1, x2 - cx, y2 - cy]) / stride

    put(2, 32, 224, 160, 0.9, (160, 80, 320, 288))  # frame box (200, 100, 400, 360)
    put(1, 16, 224, 160, 0.6, (164, 84, 320, 288))
    put(0, 8, 400, 400, 0.95, (380, 380, 420, 420))
    return outputs


def test_insightface_landmarker_with_fake_sessions():
    truth = np.zeros((106, 2))
    truth[:, 0], truth[:, 1] = 300, 230
    truth[ifb.LEFT_BROW_106] = [260, 200]
    truth[ifb.RIGHT_BROW_106] = [340, 198]
    truth[ifb.NOSE_106] = [301, 240]
    scale = 192 / (260 * 1.5)
    prediction = ((truth - [300, 230]) * scale / 96).astype(np.float32).reshape(1, 212)

    def check_det(blob):
        assert blob.shape == (1, 3, 512, 512)

    def check_lmk(blob):
        assert blob.shape == (1, 3, 192, 192) and blob.max() <= 255  # raw pixels

    landmarker = ifb.InsightFaceLandmarker(
        detector_session=_FakeSession([1, 3, "?", "?"], _det10g_outputs(), check_det),
        landmark_session=_FakeSession([None, 3, 192, 192], [prediction], check_lmk))
    result = landmarker.detect(np.full((480, 640, 3), 90, np.uint8))
    assert result is not None and result.num_faces == 1
    np.testing.assert_allclose(result.bbox, (200, 100, 400, 360), atol=1e-3)
    np.testing.assert_array_equal(result.points3, [[260, 200], [340, 198], [301, 240]])
    assert result.score == pytest.approx(0.9)
