"""One landmarker interface for every face backend.

A landmarker turns an RGB uint8 frame into the three points the aligner needs
(left-brow centre, right-brow centre, nose centre, rounded as the reference rounds),
plus the face box and how many usable faces it saw, so that the pipeline can say
"several faces, took the largest".

Backends:

* ``insightface``: what LatentSync 1.5/1.6 runs (SCRFD ``det_10g`` + the 106-point
  ``2d106det`` model from InsightFace's ``buffalo_l`` pack). The reference lets
  InsightFace fetch the pack into ``checkpoints/auxiliary/models/buffalo_l/``; we only
  look there and never download.
* ``dlib``: the embedded default, needing no download (dlib's HOG face detector and
  the 68-point predictor from the ``face_recognition_models`` wheel), with
  LatentSync 1.0's 68-point scheme.

``make_landmarker("auto", ...)`` picks InsightFace when its two model files are in
place, dlib otherwise. The choice changes the points (different models), so it is
reported through ``Landmarker.name`` rather than made silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from fastsync.errors import CheckpointError

BACKENDS = ("auto", "insightface", "dlib")


@dataclass(frozen=True)
class FaceResult:
    points3: np.ndarray  # (3, 2) float64: left-brow centre, right-brow centre, nose centre (x, y)
    bbox: tuple[float, float, float, float]  # detector box x1, y1, x2, y2 in frame pixels
    num_faces: int  # usable faces seen in the frame; the largest one was taken
    score: float | None = None  # detector confidence, where the detector gives one


@runtime_checkable
class Landmarker(Protocol):
    """Finds the largest face in an RGB uint8 (H, W, 3) frame; None when there is none.
    fastsync's backends also take `near=(x, y)`: the face nearest that point instead
    (fastsync.face.choice); a landmarker without it serves jobs that give no point."""

    name: str

    def detect(self, frame: np.ndarray) -> FaceResult | None: ...

    def detect_batch(self, frames: Sequence[np.ndarray]) -> list[FaceResult | None]:
        return [self.detect(frame) for frame in frames]


def check_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 frame (H, W, 3), got {frame.shape} {frame.dtype}")
    return np.ascontiguousarray(frame)


def insightface_model_dir(checkpoint_dir: str | Path) -> Path:
    """Where LatentSync 1.5/1.6 keeps InsightFace's ``buffalo_l`` pack."""
    from fastsync.face.insightface_backend import MODEL_SUBDIR

    return Path(checkpoint_dir).joinpath(*MODEL_SUBDIR)


def insightface_available(checkpoint_dir: str | Path | None) -> bool:
    if checkpoint_dir is None:
        return False
    from fastsync.face.insightface_backend import model_files

    return all(path.is_file() for path in model_files(insightface_model_dir(checkpoint_dir)))


def make_landmarker(kind: str = "auto", checkpoint_dir: str | Path | None = None,
                    device: object = "cpu") -> Landmarker:
    """`kind`: "auto" | "insightface" | "dlib". `checkpoint_dir` is the folder holding
    ``auxiliary/`` (LatentSync's ``checkpoints``); `device` a torch device or its name."""
    if kind not in BACKENDS:
        raise ValueError(f"unknown face backend {kind!r}; choose one of {BACKENDS}")
    if kind == "auto":
        kind = "insightface" if insightface_available(checkpoint_dir) else "dlib"
    if kind == "dlib":
        from fastsync.face.dlib_backend import DlibLandmarker

        return DlibLandmarker()

    from fastsync.face.insightface_backend import InsightFaceLandmarker, model_files

    if checkpoint_dir is None:
        raise CheckpointError("the insightface backend needs a checkpoint directory",
                              hint="pass the folder that holds auxiliary/models/buffalo_l")
    model_dir = insightface_model_dir(checkpoint_dir)
    missing = [path for path in model_files(model_dir) if not path.is_file()]
    if missing:
        raise CheckpointError(
            f"missing InsightFace model file(s): {', '.join(p.name for p in missing)}", model_dir,
            hint="unzip InsightFace's buffalo_l.zip (det_10g.onnx, 2d106det.onnx) into this folder, "
                 "or use the dlib backend")
    return InsightFaceLandmarker(model_dir, device=device)
