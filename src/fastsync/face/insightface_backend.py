"""InsightFace-compatible landmarker: the face models LatentSync 1.5/1.6 use.

Models (InsightFace's ``buffalo_l`` pack, which the reference unpacks into
``checkpoints/auxiliary/models/buffalo_l/``): ``det_10g.onnx`` (SCRFD-10G detector) and
``2d106det.onnx`` (106-point 2D landmarks). We run them with onnxruntime and do the pre-
and post-processing here, without the insightface package. What the reference does per
frame, and we do too:

1. Detection at 512 x 512: the frame is resized (bilinear) to fit 512 with its aspect
   ratio kept, pasted top-left on a black 512 x 512 canvas, turned into a blob
   ``(pixel - 127.5) / 128`` with the first and third channels swapped, and run.
2. Per stride (8, 16, 32; 2 anchors per cell for det_10g), anchor centres are the cell
   corners ``(x, y) * stride``; scores >= 0.5 are kept; box distances (left, top,
   right, bottom) times the stride are decoded around the centres; boxes go back to
   frame pixels by dividing by the resize factor; greedy NMS at IoU 0.4 with the
   "+1 pixel" area convention, in descending score order.
3. The face: among detections whose integer-cast box is at least 50 wide and 80 high,
   with width / height in [0.2, 1.5] and score >= 0.5, the one with the largest box
   area (the first such in score order on a tie).
4. Landmarks: a 192 x 192 crop centred on the box centre, scaled by
   ``192 / (1.5 * max(w, h))`` (bilinear, black outside); the blob is the raw pixels
   (this model normalises inside its graph), channels swapped as in step 1; the 212
   outputs are (x, y) pairs in [-1, 1] crop units: ``(p + 1) * 96`` then mapped back to
   the frame with the inverse crop transform.
5. Three points: the 106 points are rounded to integers; left brow = mean of points
   43, 48, 49, 51, 50; right brow = mean of 101-105; nose = mean of 74, 77, 83, 86; then
   rounded again (numpy's half-to-even).

Channel order: the reference hands InsightFace *RGB* frames, while InsightFace expects
BGR and swaps to what it thinks is RGB, so the networks really see BGR. We keep that
quirk (the swap in `make_blob`, applied to our RGB frames) because matching the
reference's points matters more than the colour order the models were trained on.

Honesty note: the official ONNX files cannot be downloaded in our build environment,
so this end-to-end path is UNTESTED against the real models. The pure-numpy parts
(anchors, distance decoding, NMS, face choice, crop transform, landmark decoding,
three-point scheme) are unit-tested with hand-made inputs, and the session plumbing
with fake sessions.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fastsync.face.choice import Point, nearest
from fastsync.face.landmarks import FaceResult, Landmarker, check_frame

MODEL_SUBDIR = ("auxiliary", "models", "buffalo_l")
DETECTOR_FILE = "det_10g.onnx"
LANDMARK_FILE = "2d106det.onnx"

DET_SIZE = 512  # LatentSync's INSIGHTFACE_DETECT_SIZE (InsightFace's own default is 640)
DET_MEAN, DET_STD = 127.5, 128.0
DET_THRESHOLD = 0.5
NMS_IOU = 0.4

LMK_SIZE = 192
# 2d106det is a converted mxnet model that normalises inside its graph; InsightFace
# detects that from the graph's first nodes and feeds raw pixels (mean 0, std 1).
LMK_MEAN, LMK_STD = 0.0, 1.0
LMK_COUNT = 106
LMK_CROP_ENLARGE = 1.5

# The reference's filter on detections (face_detector.py), in integer box pixels.
MIN_FACE_WIDTH, MIN_FACE_HEIGHT = 50, 80
ASPECT_MIN, ASPECT_MAX = 0.2, 1.5
MIN_SCORE = 0.5

LEFT_BROW_106 = [43, 48, 49, 51, 50]
RIGHT_BROW_106 = [101, 102, 103, 104, 105]
NOSE_106 = [74, 77, 83, 86]


def model_files(model_dir: str | Path) -> tuple[Path, Path]:
    model_dir = Path(model_dir)
    return model_dir / DETECTOR_FILE, model_dir / LANDMARK_FILE


# -- detection: pre-processing ---------------------------------------------------------------

def letterbox(frame: np.ndarray, size: int = DET_SIZE) -> tuple[np.ndarray, float]:
    """Resize to fit (size, size) keeping the aspect ratio, paste top-left on black.
    Returns (canvas (size, size, 3) uint8, scale = canvas pixels per frame pixel)."""
    height, width = frame.shape[:2]
    if height / width > 1.0:  # taller than the (square) input
        new_h, new_w = size, int(size / (height / width))
    else:
        new_w, new_h = size, int(size * (height / width))
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(frame, (new_w, new_h))
    return canvas, new_h / height


def make_blob(image: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 = (pixel - mean) / std, channels 0 and 2
    swapped (what cv2.dnn.blobFromImage(..., swapRB=True) does)."""
    swapped = image[:, :, ::-1].astype(np.float32)
    blob = (swapped - np.float32(mean)) * np.float32(1.0 / std)
    return np.ascontiguousarray(blob.transpose(2, 0, 1)[None])


# -- detection: decoding ---------------------------------------------------------------------

def scrfd_layout(num_outputs: int) -> tuple[tuple[int, ...], int, bool]:
    """(strides, anchors per cell, has keypoints) from the model's output count."""
    layouts = {
        6: ((8, 16, 32), 2, False),
        9: ((8, 16, 32), 2, True),  # det_10g
        10: ((8, 16, 32, 64, 128), 1, False),
        15: ((8, 16, 32, 64, 128), 1, True),
    }
    if num_outputs not in layouts:
        raise ValueError(f"not an SCRFD detector: {num_outputs} outputs (expected 6, 9, 10 or 15)")
    return layouts[num_outputs]


def anchor_centers(height: int, width: int, stride: int, num_anchors: int) -> np.ndarray:
    """(height * width * num_anchors, 2) float32 (x, y) pixel centres: cells in row-major
    order, each cell's anchors adjacent."""
    ys, xs = np.mgrid[:height, :width]
    centres = np.stack([xs, ys], axis=-1).astype(np.float32).reshape(-1, 2) * stride
    return np.repeat(centres, num_anchors, axis=0)


def distance_to_bbox(centres: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """(N, 2) centres and (N, 4) left/top/right/bottom distances -> (N, 4) x1, y1, x2, y2."""
    return np.concatenate([centres - distances[:, 0:2], centres + distances[:, 2:4]], axis=1)


def distance_to_points(centres: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """(N, 2) centres and (N, 2K) offsets -> (N, K, 2) points."""
    return centres[:, None, :] + distances.reshape(len(distances), -1, 2)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = NMS_IOU) -> list[int]:
    """Greedy non-maximum suppression; returns kept indices, best score first. Areas use
    the inclusive-pixel convention (w + 1) * (h + 1), as InsightFace does."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        inter_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = inter_w * inter_h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return keep


def decode_scrfd(outputs: Sequence[np.ndarray], input_size: int, threshold: float = DET_THRESHOLD
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Raw SCRFD outputs (scores per stride, then boxes, then keypoints) for a square
    input -> (boxes (N, 4), scores (N,), keypoints (N, 5, 2) | None) in input pixels,
    above `threshold`, before NMS."""
    strides, num_anchors, has_kps = scrfd_layout(len(outputs))
    levels = len(strides)
    boxes, scores, points = [], [], []
    for level, stride in enumerate(strides):
        # a batched export has a leading batch axis of 1
        score = np.asarray(outputs[level]).reshape(-1)
        distance = np.asarray(outputs[level + levels]).reshape(len(score), 4) * stride
        side = input_size // stride
        centres = anchor_centers(side, side, stride, num_anchors)
        keep = np.where(score >= threshold)[0]
        boxes.append(distance_to_bbox(centres, distance)[keep])
        scores.append(score[keep])
        if has_kps:
            offsets = np.asarray(outputs[level + 2 * levels]).reshape(len(score), -1) * stride
            points.append(distance_to_points(centres, offsets)[keep])
    kps = np.concatenate(points) if has_kps else None
    return np.concatenate(boxes), np.concatenate(scores), kps


def pick_largest_valid(boxes: np.ndarray, scores: np.ndarray, near: Point | None = None) -> tuple[int | None, int]:
    """The reference's choice among detections (given best score first): (index of the
    largest valid face or None, number of valid faces). With `near`, the valid face whose
    box centre is nearest that point instead (fastsync.face.choice)."""
    best, best_area, valid = None, 0, []
    for i, (box, score) in enumerate(zip(boxes, scores)):
        x1, y1, x2, y2 = box.astype(np.int_).tolist()  # truncation, as the reference
        w, h = x2 - x1, y2 - y1
        if w < MIN_FACE_WIDTH or h < MIN_FACE_HEIGHT:
            continue
        if not ASPECT_MIN <= w / h <= ASPECT_MAX or score < MIN_SCORE:
            continue
        valid.append(i)
        if w * h > best_area:
            best, best_area = i, w * h
    if near is not None and valid:
        best = valid[nearest([boxes[i] for i in valid], near)]
    return best, len(valid)


# -- landmarks -------------------------------------------------------------------------------

def landmark_crop_matrix(bbox: Sequence[float], size: int = LMK_SIZE) -> np.ndarray:
    """(2, 3) frame->crop matrix: the box centre goes to the crop centre, and the box's
    longer side becomes size / 1.5."""
    x1, y1, x2, y2 = (float(v) for v in bbox[:4])
    scale = size / (max(x2 - x1, y2 - y1) * LMK_CROP_ENLARGE)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return np.array([[scale, 0.0, size / 2 - cx * scale], [0.0, scale, size / 2 - cy * scale]])


def decode_landmarks(prediction: np.ndarray, crop_matrix: np.ndarray, size: int = LMK_SIZE,
                     count: int = LMK_COUNT) -> np.ndarray:
    """Model output (2 * count values in [-1, 1] crop units, maybe more leading) ->
    (count, 2) float32 frame pixels."""
    points = np.asarray(prediction, dtype=np.float32).reshape(-1, 2)[-count:]
    points = (points + 1) * (size // 2)
    back = cv2.invertAffineTransform(crop_matrix)
    homogeneous = np.concatenate([points, np.ones((len(points), 1), np.float32)], axis=1)
    return (homogeneous.astype(np.float64) @ back.T).astype(np.float32)


def points3_from_106(landmarks: np.ndarray) -> np.ndarray:
    """(106, 2) -> (3, 2) float64: the reference rounds the points, averages, rounds again."""
    whole = np.round(landmarks).astype(np.int_)
    centres = [whole[LEFT_BROW_106].mean(axis=0), whole[RIGHT_BROW_106].mean(axis=0),
               whole[NOSE_106].mean(axis=0)]
    return np.round(np.stack(centres))


# -- sessions --------------------------------------------------------------------------------

def onnx_providers(device: object) -> list[Any]:
    import onnxruntime as ort

    name = str(device)
    if not name.startswith("cuda"):
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        warnings.warn("onnxruntime has no CUDA provider here: face detection runs on the CPU "
                      "(same models, slower; install onnxruntime-gpu for speed)", stacklevel=3)
        return ["CPUExecutionProvider"]
    index = int(name.split(":")[1]) if ":" in name else 0
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


def open_session(path: Path, device: object):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=onnx_providers(device))


class InsightFaceLandmarker(Landmarker):
    """SCRFD + 106-point landmarks, reproducing LatentSync 1.5/1.6's FaceDetector.

    Pass `model_dir` (holding det_10g.onnx and 2d106det.onnx), or ready sessions (any
    object with onnxruntime's get_inputs / get_outputs / run, which is how tests drive
    it). onnxruntime sessions may be called from several threads at once.
    """

    name = "insightface-buffalo_l"

    def __init__(self, model_dir: str | Path | None = None, device: object = "cpu",
                 detector_session: Any = None, landmark_session: Any = None):
        if detector_session is None or landmark_session is None:
            if model_dir is None:
                raise ValueError("give model_dir or both sessions")
            det_path, lmk_path = model_files(model_dir)
            detector_session = detector_session or open_session(det_path, device)
            landmark_session = landmark_session or open_session(lmk_path, device)
        self.detector = detector_session
        self.landmarker = landmark_session
        self._det_input = detector_session.get_inputs()[0].name
        self._det_outputs = [o.name for o in detector_session.get_outputs()]
        scrfd_layout(len(self._det_outputs))  # fail early on a wrong file
        self._lmk_input = landmark_session.get_inputs()[0].name
        self._lmk_outputs = [o.name for o in landmark_session.get_outputs()]

    def detect_faces(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All detections after NMS: (boxes (N, 4) frame pixels, scores (N,)), best first."""
        canvas, scale = letterbox(frame, DET_SIZE)
        outputs = self.detector.run(self._det_outputs, {self._det_input: make_blob(canvas, DET_MEAN, DET_STD)})
        boxes, scores, _ = decode_scrfd(outputs, DET_SIZE, DET_THRESHOLD)
        boxes = boxes / scale
        order = scores.argsort()[::-1]
        boxes, scores = boxes[order].astype(np.float32), scores[order].astype(np.float32)
        keep = nms(boxes, scores, NMS_IOU)
        return boxes[keep], scores[keep]

    def landmarks106(self, frame: np.ndarray, bbox: Sequence[float]) -> np.ndarray:
        matrix = landmark_crop_matrix(bbox, LMK_SIZE)
        crop = cv2.warpAffine(frame, matrix, (LMK_SIZE, LMK_SIZE), borderValue=0.0)
        blob = make_blob(crop, LMK_MEAN, LMK_STD)
        prediction = self.landmarker.run(self._lmk_outputs, {self._lmk_input: blob})[0][0]
        return decode_landmarks(prediction, matrix, LMK_SIZE, LMK_COUNT)

    def detect(self, frame: np.ndarray, near: Point | None = None) -> FaceResult | None:
        """The largest valid face, or with `near` the one nearest that point."""
        frame = check_frame(frame)
        boxes, scores = self.detect_faces(frame)
        best, valid = pick_largest_valid(boxes, scores, near)
        if best is None:
            return None
        box = boxes[best]
        points3 = points3_from_106(self.landmarks106(frame, box))
        bbox = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
        return FaceResult(points3, bbox, valid, float(scores[best]))
