"""Golden parity for alignment and paste-back (`align_<case>_align.pt`).

The case file holds frames, their rounded three-point landmarks, and what the reference
computed from them: the smoothed matrices (in sequence), the aligned faces, and frames
restored from a deterministic edit of those faces (golden/README.md has the recipe).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fastsync.face.align import Aligner
from fastsync.face.restore import paste_back
from fastsync.tools.parity import Metric

AFFINE_TOL = 1e-3
MEAN_ABS_TOL = 1.0  # 0-255 scale
MAX_ABS_TOL = 48.0


def golden_restore_input(aligned_face: np.ndarray) -> torch.Tensor:
    """The golden recipe's stand-in for a generated face: the aligned face in [-1, 1]
    with its lower half (rows >= res/2) multiplied by -0.5, so paste-back is visible."""
    face = (torch.from_numpy(aligned_face).permute(2, 0, 1).float() / 255.0 - 0.5) / 0.5
    half = face.shape[1] // 2
    face[:, half:] *= -0.5
    return face


def _abs_diff(ours: np.ndarray, golden: np.ndarray) -> np.ndarray:
    return np.abs(ours.astype(np.int16) - golden.astype(np.int16))


def check_align_case(case: str, files: dict[str, Path]) -> list[Metric]:
    data = torch.load(files["align.pt"], map_location="cpu", weights_only=False)
    resolution = int(data.get("resolution", 512))
    frames = data["frames"].numpy()
    landmarks = data["landmarks3"].numpy()
    golden_affine = data["affine_matrices"].numpy()
    golden_faces = data["aligned_faces"].numpy()
    golden_restored = data["restored_frames"].numpy()

    aligner = Aligner(resolution)
    affine_err, aligned, restored = 0.0, [], []
    for i, frame in enumerate(frames):
        face, affine = aligner.align(frame, landmarks[i])
        affine_err = max(affine_err, float(np.abs(affine - golden_affine[i]).max()))
        aligned.append(_abs_diff(face, golden_faces[i]))
        # Our own face and matrix go into paste-back, so the whole chain is checked at once.
        restored_frame = paste_back(frame, golden_restore_input(face), affine)
        restored.append(_abs_diff(restored_frame, golden_restored[i]))

    aligned_d, restored_d = np.stack(aligned), np.stack(restored)
    return [
        Metric("affine_max_abs_err", affine_err, AFFINE_TOL),
        Metric("aligned_mean_abs", float(aligned_d.mean()), MEAN_ABS_TOL),
        Metric("aligned_max_abs", float(aligned_d.max()), MAX_ABS_TOL),
        Metric("restored_mean_abs", float(restored_d.mean()), MEAN_ABS_TOL),
        Metric("restored_max_abs", float(restored_d.max()), MAX_ABS_TOL),
    ]
