"""The generated mouth mask equals the reference's mask.png pixel for pixel."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fastsync.face.mask import make_mask, mask_for_resolution


def _reference_png(assets_dir):
    image = cv2.imread(str(assets_dir / "mask.png"))
    assert image is not None, f"cannot read {assets_dir / 'mask.png'}"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def test_generated_mask_matches_png(assets_dir):
    png = _reference_png(assets_dir)
    ours = make_mask()
    assert ours.dtype == np.uint8 and ours.shape == (256, 256)
    for channel in range(3):
        np.testing.assert_array_equal(ours, png[..., channel])


@pytest.mark.parametrize("resolution", [256, 512])
def test_resized_mask_matches_reference_loader(assets_dir, resolution):
    # the reference: Lanczos-4 resize of the 3-channel uint8 image, then / 255
    expected = cv2.resize(_reference_png(assets_dir), (resolution, resolution),
                          interpolation=cv2.INTER_LANCZOS4) / 255.0
    ours = mask_for_resolution(resolution)
    assert ours.shape == (resolution, resolution) and ours.dtype == np.float64
    assert ours.min() >= 0.0 and ours.max() <= 1.0
    for channel in range(3):
        np.testing.assert_array_equal(ours, expected[..., channel])


def test_mask_regenerates_the_lower_face():
    mask = mask_for_resolution(512)
    assert mask[:180].min() == 1.0  # eyes and forehead always kept
    assert mask[350, 256] == 0.0  # mouth regenerated
