"""Output quality: PSNR and SSIM between two videos, over every frame.

SSIM follows Wang et al. 2004 (IEEE TIP 13(4)): an 11x11 Gaussian window with
sigma 1.5, C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 255, computed on each RGB
channel and averaged. It is written here (a dozen lines of torch) rather than taken
from scikit-image so that it runs batched on whatever device the frames are on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

_L = 255.0
_C1 = (0.01 * _L) ** 2
_C2 = (0.03 * _L) ** 2


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per image. a, b: (N, 3, H, W) float in [0, 255]; H, W >= 11."""
    window = _gaussian_window().to(a.device)[None, None].expand(a.shape[1], 1, -1, -1)

    def blur(x):
        return F.conv2d(x, window, groups=a.shape[1])

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + _C1) * (2 * cov + _C2)
    den = (mu_a**2 + mu_b**2 + _C1) * (var_a + var_b + _C2)
    return (num / den).flatten(1).mean(1)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).flatten(1).mean(1)


def psnr_from_mse(value: float) -> float:
    return float("inf") if value == 0 else 10 * math.log10(_L**2 / value)


@dataclass
class Quality:
    frames: int
    psnr_db: float  # from the mean squared error over all frames (not a mean of per-frame PSNRs)
    ssim: float  # mean over frames
    mouth_psnr_db: float | None = None
    mouth_ssim: float | None = None

    def as_dict(self) -> dict:
        return {k: (None if v is None else (round(v, 4) if isinstance(v, float) else v))
                for k, v in self.__dict__.items()}


class _Accumulator:
    def __init__(self):
        self.sq = 0.0
        self.pixels = 0
        self.ssim_sum = 0.0
        self.count = 0

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.sq += float(mse(a, b).sum()) * a[0].numel()
        self.pixels += a.numel()
        if min(a.shape[-2:]) >= 11:
            self.ssim_sum += float(ssim(a, b).sum())
            self.count += a.shape[0]

    def result(self) -> tuple[float, float]:
        return psnr_from_mse(self.sq / max(self.pixels, 1)), self.ssim_sum / max(self.count, 1)


def _to_tensor(frame, device) -> torch.Tensor:
    return torch.from_numpy(frame).to(device).permute(2, 0, 1)[None].float()


def compare_frames(frames_a: Iterable, frames_b: Iterable, mouth_boxes: Sequence | None = None,
                   device: str = "cpu") -> Quality:
    """PSNR/SSIM over all frame pairs; mouth_boxes[i] = (x0, y0, x1, y1) or None per frame."""
    whole, mouth = _Accumulator(), _Accumulator()
    n = 0
    for i, (fa, fb) in enumerate(zip(frames_a, frames_b, strict=True)):
        a, b = _to_tensor(fa, device), _to_tensor(fb, device)
        if a.shape != b.shape:
            raise ValueError(f"frame {i}: sizes differ {tuple(a.shape)} vs {tuple(b.shape)}")
        whole.add(a, b)
        box = mouth_boxes[i] if mouth_boxes is not None and i < len(mouth_boxes) else None
        if box is not None:
            x0, y0, x1, y1 = (int(v) for v in box)
            mouth.add(a[..., y0:y1, x0:x1], b[..., y0:y1, x0:x1])
        n += 1
    psnr, ssim_mean = whole.result()
    quality = Quality(n, psnr, ssim_mean)
    if mouth.pixels:
        quality.mouth_psnr_db, quality.mouth_ssim = mouth.result()
    return quality


def compare_videos(path_a: Path, path_b: Path, mouth_boxes: Sequence | None = None) -> Quality:
    from fastsync.media.video import iter_frames_25fps

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return compare_frames(iter_frames_25fps(path_a), iter_frames_25fps(path_b), mouth_boxes, device)
    except ValueError as exc:
        raise ValueError(f"{path_a} vs {path_b}: {exc}") from exc
