"""Paste-back: an unchanged face goes back (almost) invisibly; the windowed fast path
equals the whole-frame computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastsync.face.align import Aligner
from fastsync.face.restore import face_to_float, paste_back


@pytest.fixture(scope="module")
def aligned(golden_dir):
    data = torch.load(golden_dir / "align_demo1_align.pt", map_location="cpu", weights_only=False)
    frame, points3 = data["frames"][0].numpy(), data["landmarks3"][0].numpy()
    face, affine = Aligner(512).align(frame, points3)
    return frame, face, affine


def test_unchanged_face_leaves_frame_nearly_unchanged(aligned):
    frame, face, affine = aligned
    out = paste_back(frame, face, affine)
    assert out.shape == frame.shape and out.dtype == np.uint8
    diff = np.abs(out.astype(np.int16) - frame.astype(np.int16)).max(axis=2)
    changed = np.argwhere(diff > 0)
    # the crop covers ~80 x 105 frame pixels around the face; nothing else may move
    (y0, x0), (y1, x1) = changed.min(axis=0), changed.max(axis=0)
    assert x1 - x0 < 120 and y1 - y0 < 140
    # where anything changed it is resampling blur (warp, Lanczos, bicubic, warp back)
    assert diff.mean() < 0.1
    assert diff[y0:y1 + 1, x0:x1 + 1].mean() < 3.0


def test_uint8_and_float_faces_are_the_same_input(aligned):
    frame, face, affine = aligned
    as_float = face_to_float(face).numpy()
    assert as_float.shape == (3, 512, 512) and -1.0 <= as_float.min() and as_float.max() <= 1.0
    np.testing.assert_array_equal(paste_back(frame, face, affine), paste_back(frame, as_float, affine))


# inside the frame; across its left edge; across its bottom edge; entirely outside
@pytest.mark.parametrize("shift", [(0.0, 0.0), (1500.0, 0.0), (0.0, -3000.0), (0.0, 20000.0)])
def test_window_equals_whole_frame(aligned, shift):
    frame, face, affine = aligned
    moved = affine.copy()
    moved[:, 2] += shift
    edited = face_to_float(face)
    edited[:, 256:] *= -0.5
    np.testing.assert_array_equal(paste_back(frame, edited, moved, window=True),
                                  paste_back(frame, edited, moved, window=False))

