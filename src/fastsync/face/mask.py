"""The fixed mouth mask, generated in code instead of shipped as a PNG.

LatentSync regenerates the lower face of every aligned crop; which pixels is fixed by a
256 x 256 black-and-white image (black = regenerate, white = keep). Inspected row by
row it is:

* rows 95-127: two blocks, columns 9-77 and 178-246 (the cheeks; the nose between
  them is kept);
* rows 128-242: one span per row whose ends trace a rounded chin. It is hand drawn,
  not a circle or an ellipse (the best ellipse misses ~380 pixels and the last rows are
  lopsided), so its two edges are stored below, one number per row;
* everything else white.

`make_mask()` rebuilds it pixel for pixel (a test compares against the reference's
PNG). `mask_for_resolution(res)` reproduces the reference's ``load_fixed_mask``: an
OpenCV Lanczos-4 resize of the uint8 image, then ``/ 255`` into float64. The result is
*not* binary (Lanczos rings a little near the edges) and stays in [0, 1] because the
resize saturates to uint8 first; the reference uses it as is, as do we. Its three
colour channels are identical, so one channel is returned.
"""

from __future__ import annotations

import cv2
import numpy as np

MASK_SIZE = 256
KEEP, REGENERATE = 255, 0

CHEEK_ROWS = (95, 128)  # [start, stop)
CHEEK_SPANS = ((9, 77), (178, 246))  # inclusive column ranges
CHIN_FIRST_ROW = 128

# Inclusive first and last regenerated column of rows 128, 129, ..., 242.
CHIN_LEFT = (
    9, 9, 9, 9, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10,
    10, 10, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 12, 12, 12, 12,
    12, 12, 12, 13, 13, 14, 14, 15, 15, 16, 16, 17, 18, 18, 19, 19, 20, 21, 21, 22,
    22, 23, 24, 25, 26, 26, 27, 28, 29, 30, 31, 32, 33, 34, 34, 35, 36, 37, 38, 39,
    40, 42, 43, 44, 45, 47, 48, 49, 51, 52, 54, 56, 57, 59, 60, 62, 64, 66, 68, 70,
    72, 74, 76, 78, 80, 82, 85, 87, 90, 93, 95, 99, 104, 108, 131,
)
CHIN_RIGHT = (
    247, 247, 247, 247, 247, 247, 247, 246, 246, 246, 246, 246, 246, 246, 246, 246, 246, 246, 246, 246,
    246, 245, 245, 245, 245, 245, 245, 245, 245, 245, 245, 245, 245, 245, 245, 244, 244, 244, 244, 244,
    244, 244, 243, 243, 242, 242, 241, 241, 240, 240, 239, 238, 238, 237, 236, 236, 235, 234, 234, 233,
    232, 232, 231, 230, 230, 229, 228, 228, 227, 226, 225, 224, 223, 223, 222, 221, 220, 219, 218, 217,
    216, 215, 214, 213, 212, 211, 210, 208, 207, 206, 204, 203, 202, 200, 199, 197, 196, 194, 192, 191,
    189, 187, 185, 183, 180, 178, 175, 173, 171, 168, 166, 164, 160, 156, 152,
)


def _mask_256() -> np.ndarray:
    mask = np.full((MASK_SIZE, MASK_SIZE), KEEP, dtype=np.uint8)
    for first, last in CHEEK_SPANS:
        mask[CHEEK_ROWS[0]:CHEEK_ROWS[1], first:last + 1] = REGENERATE
    for row, (first, last) in enumerate(zip(CHIN_LEFT, CHIN_RIGHT), start=CHIN_FIRST_ROW):
        mask[row, first:last + 1] = REGENERATE
    return mask


def make_mask(size: int = MASK_SIZE) -> np.ndarray:
    """(size, size) uint8, 0 = regenerate, 255 = keep; resized from 256 with Lanczos-4."""
    mask = _mask_256()
    if size == MASK_SIZE:
        return mask
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_LANCZOS4)


def mask_for_resolution(resolution: int) -> np.ndarray:
    """(res, res) float64 in [0, 1]: 1 keeps the reference face, 0 is regenerated."""
    return make_mask(resolution) / 255.0
