"""The embedded default landmarker: dlib's HOG face detector + 68-point shape predictor.

Why dlib as the default:

* its 68-point model ships on PyPI (the ``face_recognition_models`` wheel), so a fresh
  install works with no download and no account;
* CPU only and deterministic: the same frame gives the same points on every machine,
  which keeps the smoothing and the tests reproducible;
* 68 points are what LatentSync 1.0 aligned with, and its three points are defined
  on them: the means of points 17-21 (left brow), 22-26 (right brow) and 27-35 (nose).
  We round those means to whole pixels, as 1.5/1.6 round theirs (dlib's points are
  already integers, so this is the same treatment the reference gives its rounded
  106 points).

The official 1.5/1.6 models (InsightFace) give different points; use them for
reference-exact output (`fastsync.face.insightface_backend`).

Speed: the HOG detector's cost grows with the pixel count (~170 ms on a 1080x1920 frame
here, ~20 ms at 360x640), so it looks at a copy whose long side is `detect_long_side`
(640 by default) and the box is mapped back. The shape predictor then runs on the
full-resolution frame, so the points keep full precision. The cost: faces smaller than
about 80 px *at the detection scale* are missed (240 px on a 1920-pixel frame); raise
`detect_long_side` or `upsample` for small faces.

Which face: the largest detected box. The reference's validity filter (at least 50 x 80
pixels, width / height in [0.2, 1.5]) is tuned to SCRFD's boxes and is not applied to
HOG's square, tighter ones; `num_faces` counts every detection.

Thread safety: dlib documents its object detectors as unsafe to share between threads
(they keep scratch state), so every thread gets its own detector; the shape predictor
is safe to share. dlib releases the GIL while it works, so threads do run in parallel.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import cv2
import numpy as np

from fastsync.errors import CheckpointError
from fastsync.face.choice import Point, nearest
from fastsync.face.landmarks import FaceResult, Landmarker, check_frame

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
LEFT_BROW = slice(17, 22)
RIGHT_BROW = slice(22, 27)
NOSE = slice(27, 36)


def default_predictor_path() -> Path:
    """The 68-point model inside the face_recognition_models package, found without
    importing it (its __init__ needs pkg_resources, which may be absent)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("the face_recognition_models package is not installed",
                              hint="pip install face-recognition-models==0.3.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / PREDICTOR_FILE
    if not path.is_file():
        raise CheckpointError("dlib's 68-point model is missing from face_recognition_models", path,
                              hint="reinstall face-recognition-models==0.3.0")
    return path


def points3_from_68(points68: np.ndarray) -> np.ndarray:
    """(68, 2) -> (3, 2): rounded means of the left brow, right brow and nose points."""
    points68 = np.asarray(points68, dtype=np.float64)
    centres = [points68[LEFT_BROW].mean(axis=0), points68[RIGHT_BROW].mean(axis=0), points68[NOSE].mean(axis=0)]
    return np.round(np.stack(centres))  # numpy rounds halves to even, like the reference's np.round


def detection_scale(height: int, width: int, long_side: int | None) -> float:
    if not long_side:
        return 1.0
    return min(1.0, long_side / max(height, width))


class DlibLandmarker(Landmarker):
    name = "dlib-68"

    def __init__(self, detect_long_side: int | None = 640, upsample: int = 0,
                 predictor_path: str | Path | None = None):
        import dlib

        self._dlib = dlib
        self.detect_long_side = detect_long_side
        self.upsample = upsample
        self.predictor = dlib.shape_predictor(str(predictor_path or default_predictor_path()))
        self._local = threading.local()

    def _detector(self):
        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = self._local.detector = self._dlib.get_frontal_face_detector()
        return detector

    def _boxes(self, frame: np.ndarray) -> list[tuple[float, float, float, float, float]]:
        """(x1, y1, x2, y2, score) in full-frame pixels, largest first."""
        height, width = frame.shape[:2]
        scale = detection_scale(height, width, self.detect_long_side)
        small = frame
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        rects, scores, _ = self._detector().run(small, self.upsample, 0.0)
        boxes = [(r.left() / scale, r.top() / scale, (r.right() + 1) / scale, (r.bottom() + 1) / scale, s)
                 for r, s in zip(rects, scores)]
        return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)

    def landmarks68(self, frame: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        shape = self.predictor(frame, self._dlib.rectangle(x1, y1, x2 - 1, y2 - 1))
        return np.array([(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], dtype=np.float64)

    def detect(self, frame: np.ndarray, near: Point | None = None) -> FaceResult | None:
        """The largest face, or with `near` the one whose box centre is nearest that point."""
        frame = check_frame(frame)
        boxes = self._boxes(frame)
        if not boxes:
            return None
        *box, score = boxes[0] if near is None else boxes[nearest(boxes, near)]
        points3 = points3_from_68(self.landmarks68(frame, tuple(box)))
        return FaceResult(points3, (box[0], box[1], box[2], box[3]), len(boxes), float(score))
