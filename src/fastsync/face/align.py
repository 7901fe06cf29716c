"""Face alignment: three landmarks -> similarity transform -> (res, res) face crop.

The recipe is the one LatentSync 1.5/1.6 runs for every frame (REFERENCE.md, "Video side"):

1. Fit a similarity transform (rotation, uniform scale, translation) that carries the
   three points (left-brow centre, right-brow centre, nose centre) onto the template
   ``[[17, 20], [58, 20], [37.5, 40]] * r`` with ``r = resolution / 256 * 2.8``. The fit
   is the classic Procrustes solution: centre both point sets, divide each by its
   standard deviation (unbiased, over all six coordinates), take the SVD of the 2x2
   cross-covariance, and flip the last singular direction when it would reflect.
2. Smooth the translation per video. The quantity smoothed is the *nose offset in
   normalised units*: the template's normalised nose point minus the landmarks'
   normalised nose point (both after the centring/scaling of step 1). The first frame
   uses its own offset; every later frame uses ``0.2 * previous + 0.8 * current``, where
   ``previous`` is the offset actually applied to the frame before (the smoothed one).
   The offset is added to the translation column as is, in pixels, without un-scaling:
   the reference does exactly that, and matching it matters more than its units. The
   state lives in one `Aligner` and resets only by making a new one (the reference makes
   one per video).
3. Warp the frame with that matrix (bilinear, pixels outside the frame read as 127) to
   the crop of width ``int(75 r)`` and height ``int(100 r)`` (420 x 560 at 512), and cast
   to uint8 by truncation (the reference's ``.astype(np.uint8)`` on a float image).
4. Resize the crop to ``resolution x resolution`` with OpenCV's Lanczos-4 filter.

Choices, with their measured effect on the golden case (``align_demo1``, 4 frames at 512):

* The fit runs in float32 torch, operation for operation as the reference runs it,
  because the translations are in the thousands of pixels where one float32 ulp is
  ~1e-4: a float64 fit lands 6e-4 away from the golden matrices (tolerance 1e-3), the
  float32 one 2.4e-4.
* The warp samples with ``torch.nn.functional.grid_sample`` (bilinear, corner-aligned
  pixel grid), which is what the reference's kornia call reduces to, not with
  ``cv2.warpAffine``: OpenCV quantises sub-pixel positions to 1/32 px and rounds its
  uint8 output, which costs 0.54 mean abs error on the aligned faces; this path costs
  0.002. No kornia dependency: the sampling grid is built here.
* The reference runs this on the GPU in float16; the golden data (and we) use float32.

The math is split into small array functions (`fit_similarity`, `smooth_offset`,
`crop_grid`, `sample_bilinear`) so that a batched GPU path can reuse them unchanged.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# Template for the three points at resolution 256 before the 2.8 enlargement; rows are
# left-brow centre, right-brow centre, nose centre, in (x, y) crop pixels.
TEMPLATE_UNIT = np.array([[17.0, 20.0], [58.0, 20.0], [37.5, 40.0]])
CROP_UNIT_SIZE = (75, 100)  # (width, height) of the crop at r = 1
FILL_VALUE = 127.0  # what pixels outside the frame read as during the warp
SMOOTH_KEEP = 0.2  # weight of the previous frame's nose offset


def crop_ratio(resolution: int) -> float:
    """r: template scale. Written exactly as the reference's expression so that
    int(75 * r) truncates identically (384 gives 314, not 315)."""
    return resolution / 256 * 2.8


def face_template(resolution: int) -> np.ndarray:
    """(3, 2) float64 template points in crop pixels."""
    return TEMPLATE_UNIT * crop_ratio(resolution)


def crop_size(resolution: int) -> tuple[int, int]:
    """(width, height) of the warped crop: (420, 560) at 512, (210, 280) at 256."""
    r = crop_ratio(resolution)
    return int(CROP_UNIT_SIZE[0] * r), int(CROP_UNIT_SIZE[1] * r)


def fit_similarity(points: np.ndarray, template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity carrying `points` (3, 2) onto `template` (3, 2).

    Returns (matrix (2, 3) float32 mapping frame pixels to crop pixels, unsmoothed;
    nose offset (2,) float32 = normalised template nose - normalised landmark nose).
    """
    src = torch.as_tensor(np.asarray(points, dtype=np.float64), dtype=torch.float32)
    dst = torch.as_tensor(np.asarray(template, dtype=np.float64), dtype=torch.float32)
    src_mean, dst_mean = src.mean(dim=0), dst.mean(dim=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_std, dst_std = src_c.std(), dst_c.std()  # unbiased, over all 6 numbers
    src_n, dst_n = src_c / src_std, dst_c / dst_std

    u, _, vh = torch.linalg.svd(src_n.T @ dst_n)  # (2, 2) cross-covariance
    v = vh.T
    rotation = v @ u.T
    if torch.det(rotation) < 0:  # a reflection: flip the weakest direction
        v[:, -1] = -v[:, -1]
        rotation = v @ u.T

    scale = dst_std / src_std
    linear = scale * rotation
    shift = dst_mean.reshape(2, 1) - scale * (rotation @ src_mean.reshape(2, 1))
    matrix = torch.cat([linear, shift], dim=1)
    offset = dst_n[2] - src_n[2]
    return matrix.numpy(), offset.numpy()


def smooth_offset(previous: np.ndarray | None, current: np.ndarray) -> np.ndarray:
    """The per-video smoothing of the nose offset; `previous` is the last applied one."""
    if previous is None:
        return current
    return (previous * np.float32(SMOOTH_KEEP) + current * np.float32(1 - SMOOTH_KEEP)).astype(np.float32)


def with_offset(matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    out = matrix.copy()
    out[:, 2] += offset
    return out


def crop_grid(matrix: np.ndarray, out_w: int, out_h: int, src_w: int, src_h: int) -> torch.Tensor:
    """Sampling grid (1, out_h, out_w, 2) in grid_sample's corner-aligned [-1, 1] units.

    `matrix` (2, 3) maps *source* pixels to *output* pixels (the warp's forward
    direction); each output pixel samples the source at the inverse image of its centre.
    """
    forward = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)[:2]
    return _grid_from_map(inverse, out_w, out_h, src_w, src_h)


def _grid_from_map(out_to_src: np.ndarray, out_w: int, out_h: int, src_w: int, src_h: int,
                   x0: int = 0, y0: int = 0) -> torch.Tensor:
    """Grid for output pixels (x0 .. x0+out_w-1, y0 .. y0+out_h-1) under the (2, 3) map
    `out_to_src` from output pixels to source pixels."""
    ys, xs = np.meshgrid(np.arange(y0, y0 + out_h, dtype=np.float64),
                         np.arange(x0, x0 + out_w, dtype=np.float64), indexing="ij")
    u = out_to_src[0, 0] * xs + out_to_src[0, 1] * ys + out_to_src[0, 2]
    v = out_to_src[1, 0] * xs + out_to_src[1, 1] * ys + out_to_src[1, 2]
    # align_corners=True convention: pixel 0 -> -1, pixel size-1 -> +1
    gx = u * (2.0 / max(src_w - 1, 1)) - 1.0
    gy = v * (2.0 / max(src_h - 1, 1)) - 1.0
    return torch.from_numpy(np.stack([gx, gy], axis=-1)[None].astype(np.float32))


def sample_bilinear(image: torch.Tensor, grid: torch.Tensor, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear sampling of `image` (1, C, H, W) float with pixels outside reading `fill`.

    Returns (samples (1, C, h, w), coverage (1, 1, h, w)): coverage is the share of the
    bilinear weight that fell inside the image, the same as sampling an all-ones image.
    Blending with `fill` by (1 - coverage) equals sampling an image padded with `fill`.
    """
    sampled = F.grid_sample(with_ones_channel(image), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=True)
    inside, coverage = sampled[:, :-1], sampled[:, -1:]
    if fill:
        inside = inside + (1.0 - coverage) * fill
    return inside, coverage


def with_ones_channel(image: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) -> (1, C + 1, H, W) with a last channel of ones.

    grid_sample weighs every channel of a pixel alike, so the ones channel comes out as
    the coverage, bit for bit what sampling a separate ones image gives, and the grid's
    indices and weights are worked out once instead of twice (tests/test_face_align.py).
    """
    _, _, h, w = image.shape
    return torch.cat([image, torch.ones((1, 1, h, w), dtype=image.dtype)], dim=1)


def source_window(inverse: np.ndarray, size: tuple[int, int], src_w: int, src_h: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end-exclusive: the frame pixels a bilinear warp to `size` can read.

    The crop's pixel centres map back to a parallelogram whose extremes are its corners;
    each sample reads its pixel and the next one, and one more pixel on each side absorbs
    float rounding. Clipped to the frame; the whole frame when too thin to sample.
    """
    width, height = size
    corners = np.array([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]], np.float64)
    mapped = corners @ inverse.T
    x0 = max(0, math.floor(mapped[:, 0].min()) - 1)
    y0 = max(0, math.floor(mapped[:, 1].min()) - 1)
    x1 = min(src_w, math.floor(mapped[:, 0].max()) + 3)
    y1 = min(src_h, math.floor(mapped[:, 1].max()) + 3)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return 0, 0, src_w, src_h
    return x0, y0, x1, y1


def warp_to_crop(frame: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp an RGB uint8 frame (H, W, 3) to the crop `size` = (width, height), uint8.

    Only the window of the frame the warp reads is converted to float and sampled (a face
    is a small part of a 1080x1920 frame): the same bilinear samples, a tenth of the work.
    Pixels outside the frame still read FILL_VALUE, since the window is clipped to the frame.
    """
    height, width = frame.shape[:2]
    forward = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)[:2]
    x0, y0, x1, y1 = source_window(inverse, size, width, height)
    inverse[:, 2] -= (x0, y0)  # sample window coordinates
    grid = _grid_from_map(inverse, size[0], size[1], x1 - x0, y1 - y0)
    image = torch.from_numpy(np.ascontiguousarray(frame[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()
    crop, _ = sample_bilinear(image, grid, FILL_VALUE)
    # truncation, not rounding: the reference casts its float crop with astype(np.uint8)
    return crop[0].permute(1, 2, 0).numpy().astype(np.uint8)


def resize_to_resolution(crop: np.ndarray, resolution: int) -> np.ndarray:
    return cv2.resize(crop, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)


def warp_face(frame: np.ndarray, affine: np.ndarray, resolution: int) -> np.ndarray:
    """The aligned face (res, res, 3) uint8 for a known `affine`; no smoothing state."""
    return resize_to_resolution(warp_to_crop(frame, affine, crop_size(resolution)), resolution)


class Aligner:
    """Per-video alignment with the reference's translation smoothing.

    Feed frames in video order; make a new `Aligner` (or call `reset`) per video.
    """

    def __init__(self, resolution: int = 512, smooth: bool = True):
        self.resolution = resolution
        self.smooth = smooth
        self.template = face_template(resolution)
        self.crop_size = crop_size(resolution)  # (width, height)
        self._offset: np.ndarray | None = None

    def reset(self) -> None:
        self._offset = None

    def next_matrix(self, points3: np.ndarray) -> np.ndarray:
        """The (2, 3) float32 frame->crop matrix for this frame; advances the smoothing."""
        points3 = np.asarray(points3, dtype=np.float64)
        if points3.shape != (3, 2):
            raise ValueError(f"points3 must be (3, 2) (left brow, right brow, nose), got {points3.shape}")
        matrix, offset = fit_similarity(points3, self.template)
        if not self.smooth:
            return matrix
        self._offset = smooth_offset(self._offset, offset)
        return with_offset(matrix, self._offset)

    def align(self, frame: np.ndarray, points3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(face (res, res, 3) uint8, affine (2, 3) float32) for an RGB uint8 frame."""
        affine = self.next_matrix(points3)
        return warp_face(frame, affine, self.resolution), affine
