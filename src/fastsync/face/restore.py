"""Paste-back: put a (generated) aligned face back into its original frame.

Same steps and order as the reference's ``restore_img`` (REFERENCE.md, "Video side"):

1. Resize the face to the crop size (width ``int(75 r)``, height ``int(100 r)``) with
   bicubic interpolation and antialiasing, on the float face in [-1, 1]
   (`torch.nn.functional.interpolate`, which is what torchvision's tensor resize runs).
2. Inverse-warp it into the frame: every frame pixel samples the face at the image of
   its centre under the alignment matrix (bilinear; outside the crop reads 127, in the
   face's [-1, 1] units, exactly like the reference). Then map to 0..255 with a clamp.
3. The crop's footprint in the frame is the inverse warp of an all-ones crop (zero
   outside), which is the bilinear coverage of step 2. Erode it with a 2x2 square.
4. ``w_edge = int(sqrt(sum(eroded mask))) // 20``; erode again with a ``2 w_edge``
   square, blur with a Gaussian of size ``2 w_edge + 1`` and sigma
   ``0.3 ((size - 1) / 2 - 1) + 0.8`` (reflect-101 borders).
5. ``out = soft * (eroded * face) + (1 - soft) * frame``, cast to uint8 by truncation.

Everything runs in float32 (the golden data's precision; the reference on a GPU uses
float16). For speed the work is limited to a window around the crop's footprint: the
mask is exactly zero outside it, and the window is grown by the blur radius so that
the blur sees the same zeros it would see on the whole frame; where the window meets
the frame's edge the border rule is the frame's. `paste_back(..., window=False)` runs
the whole frame; a test proves both equal.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from fastsync.face.align import FILL_VALUE, _grid_from_map, sample_bilinear

FOOTPRINT_PAD = 2  # pixels around the crop's corners where bilinear coverage can be non-zero


def face_to_float(face: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(3, S, S) float32 in [-1, 1] from either a uint8 (S, S, 3) RGB image or an already
    float (3, S, S) face in [-1, 1] (the decoder's output, kept unquantised)."""
    tensor = torch.as_tensor(face)
    if tensor.dtype == torch.uint8:
        if tensor.ndim != 3 or tensor.shape[2] != 3:
            raise ValueError(f"a uint8 face must be (S, S, 3), got {tuple(tensor.shape)}")
        return (tensor.permute(2, 0, 1).float() / 255.0 - 0.5) / 0.5
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"a float face must be (3, S, S) in [-1, 1], got {tuple(tensor.shape)}")
    return tensor.float()


def resize_face_to_crop(face: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, S, S) -> (3, height, width); `size` = (width, height)."""
    width, height = size
    resized = F.interpolate(face[None], size=(height, width), mode="bicubic", antialias=True,
                            align_corners=False)
    return resized[0]


def edge_width(mask_area: float) -> int:
    return int(mask_area**0.5) // 20


def soften(eroded: np.ndarray, w_edge: int) -> np.ndarray:
    """The blend weight: erode by 2*w_edge, then Gaussian blur of size 2*w_edge+1."""
    radius = 2 * w_edge
    # An empty kernel (w_edge 0, a crop under ~20 px) makes OpenCV erode with 3x3, in the
    # reference too: kept as is.
    center = cv2.erode(eroded, np.ones((radius, radius), np.uint8))
    size = 2 * w_edge + 1
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    return cv2.GaussianBlur(center, (size, size), sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def _footprint_box(affine: np.ndarray, size: tuple[int, int], frame_w: int, frame_h: int, grow: int):
    """Integer window (x0, y0, x1, y1), end-exclusive, holding every frame pixel whose
    bilinear sample can touch the crop, grown by `grow` and clipped to the frame."""
    width, height = size
    forward = np.vstack([np.asarray(affine, dtype=np.float64), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)[:2]
    corners = np.array([[-1, -1, 1], [width, -1, 1], [-1, height, 1], [width, height, 1]], dtype=np.float64)
    mapped = corners @ inverse.T
    pad = FOOTPRINT_PAD + grow
    x0 = max(0, math.floor(mapped[:, 0].min()) - pad)
    y0 = max(0, math.floor(mapped[:, 1].min()) - pad)
    x1 = min(frame_w, math.ceil(mapped[:, 0].max()) + pad + 1)
    y1 = min(frame_h, math.ceil(mapped[:, 1].max()) + pad + 1)
    return x0, y0, x1, y1


def _warp_back(face: torch.Tensor, affine: np.ndarray, box) -> tuple[torch.Tensor, np.ndarray]:
    """Face (3, h, w) sampled at frame pixels of `box`: (0..255 float (3, bh, bw), coverage)."""
    x0, y0, x1, y1 = box
    _, height, width = face.shape
    grid = _grid_from_map(np.asarray(affine, dtype=np.float64), x1 - x0, y1 - y0, width, height, x0, y0)
    values, coverage = sample_bilinear(face[None], grid, FILL_VALUE)
    values = (values[0] / 2 + 0.5).clamp(0, 1) * 255
    return values, coverage[0, 0].numpy()


def _eroded_area(coverage: np.ndarray, box, tight) -> float:
    """Sum of the 2x2-eroded coverage over the `tight` footprint, from coverage over `box`.

    Outside the tight footprint the coverage is zero, and erosion cannot raise a zero, so
    the sum is the one over the footprint alone. It is taken over a contiguous copy of that
    window so that float32 adds in the same order as on a footprint-sized array.
    """
    x0, y0 = tight[0] - box[0], tight[1] - box[1]
    window = coverage[y0:y0 + tight[3] - tight[1], x0:x0 + tight[2] - tight[0]]
    eroded = cv2.erode(np.ascontiguousarray(window), np.ones((2, 2), np.uint8))
    return float(eroded.sum(dtype=np.float32))


def paste_back(frame: np.ndarray, face: np.ndarray | torch.Tensor, affine: np.ndarray,
               window: bool = True) -> np.ndarray:
    """Blend `face` into a copy of `frame` (H, W, 3) uint8 RGB.

    `face`: (3, S, S) float in [-1, 1] or (S, S, 3) uint8, any S (it is resized to the
    crop); `affine`: the (2, 3) frame->crop matrix the face was aligned with. The crop
    size follows from S, as the reference's resolution sets both.

    The face and the crop's coverage are sampled in one pass over a window wide enough for
    any blur the footprint can need (its pixel count bounds the mask area); a window wider
    than needed changes nothing, since the blend weight is exactly zero outside the blur's
    reach (tests/test_face_restore.py proves it against the whole frame).
    """
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
    from fastsync.face.align import crop_size

    face_f = face_to_float(face)
    size = crop_size(face_f.shape[-1])
    crop = resize_face_to_crop(face_f, size)
    frame_h, frame_w = frame.shape[:2]

    # The mask area (and so the blur width) needs only the tight footprint.
    tight = _footprint_box(affine, size, frame_w, frame_h, 0) if window else (0, 0, frame_w, frame_h)
    out = frame.copy()
    if tight[2] <= tight[0] or tight[3] <= tight[1]:
        return out  # the crop lies entirely outside the frame
    widest = edge_width((tight[2] - tight[0]) * (tight[3] - tight[1]))  # area <= the box's pixels
    box = _footprint_box(affine, size, frame_w, frame_h, widest + 2) if window else tight
    face_px, coverage = _warp_back(crop, affine, box)
    w_edge = edge_width(_eroded_area(coverage, box, tight))

    x0, y0, x1, y1 = box
    eroded = cv2.erode(coverage, np.ones((2, 2), np.uint8))
    soft = torch.from_numpy(soften(eroded, w_edge))
    eroded_t = torch.from_numpy(eroded)

    region = torch.from_numpy(frame[y0:y1, x0:x1]).permute(2, 0, 1).float()
    blended = soft * (eroded_t * face_px) + (1 - soft) * region
    out[y0:y1, x0:x1] = blended.permute(1, 2, 0).to(torch.uint8).numpy()
    return out
