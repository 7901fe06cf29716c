"""Per-frame convolutions, the 3D ResNet block, and the down/up samplers.

Video tensors are (B, C, F, H, W). The 2D layers of the image UNet are "inflated": a conv
runs on every frame independently with the same weights. Two kinds of GroupNorm appear in
the model and must not be mixed up:

- ResNet norms and the output norm are plain `nn.GroupNorm` on the 5D tensor, so their
  statistics run over (C/G, F, H, W): all frames of a clip share one mean and variance.
- Transformer and motion-module norms run on (B*F, C, H, W): one mean/variance per frame.

PyTorch's GroupNorm/LayerNorm kernels accumulate fp16/bf16 inputs in fp32, so the norms
need no explicit upcast when the model runs in half precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fold_frames(x: Tensor) -> Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W), frame index fastest within each clip.

    `transpose` + `reshape` rather than a forced copy: for a channels_last_3d input this is
    a free view that is already channels_last for the 2D conv.
    """
    batch, channels, frames, height, width = x.shape
    return x.transpose(1, 2).reshape(batch * frames, channels, height, width)


def unfold_frames(x: Tensor, num_frames: int) -> Tensor:
    """(B*F, C, H, W) -> (B, C, F, H, W); the inverse of `fold_frames`."""
    batch_frames, channels, height, width = x.shape
    return x.reshape(batch_frames // num_frames, num_frames, channels, height, width).transpose(1, 2)


def _frames_last(*tensors: Tensor) -> bool:
    return all(t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d) for t in tensors)


def cat_channels(x: Tensor, skip: Tensor) -> Tensor:
    """torch.cat([x, skip], dim=1) of two (B, C, F, H, W) videos: the same values and layout.

    Why by hand: CUDA's batched concatenation kernel takes at most 4 dimensions. A 5D cat
    falls back to one strided copy per input: 26 copies for the UNet's 13 skip
    concatenations, where fast mode's profiled forward lists 33 generic elementwise launches,
    3.2 ms together (bench/results/README.md, 2026-12-03, also for what has been measured of
    this). For channels_last_3d inputs (fast mode's layout) the frames fold into the batch
    as a free view, so the cat runs as a channels_last 4D one and unfolds back, still
    channels_last_3d. Other layouts take the plain cat: folding them would copy.
    """
    if not _frames_last(x, skip):
        return torch.cat([x, skip], dim=1)
    return unfold_frames(torch.cat([fold_frames(x), fold_frames(skip)], dim=1), x.shape[2])


def upsample_nearest(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest upsampling of every frame of a (B, C, F, H, W) video to `size`, frames untouched.

    The reference interpolates the 5D tensor with size (F, *size). Nearest interpolation
    copies source pixels, and the frame axis keeps its length, so interpolating each folded
    frame in 2D picks the same pixels (tests/test_layouts.py holds them equal bit for bit).
    For channels_last_3d inputs that is a free view into a channels_last 2D kernel; the 5D
    one would make its input and output contiguous, and the conv after it would copy both
    back. Other layouts take the reference's call.
    """
    if not _frames_last(x):
        return F.interpolate(x, size=(x.shape[2], size[0], size[1]), mode="nearest")
    return unfold_frames(F.interpolate(fold_frames(x), size=size, mode="nearest"), x.shape[2])


class FrameConv2d(nn.Conv2d):
    """A 2D convolution applied to every frame of a (B, C, F, H, W) video with shared weights."""

    def forward(self, x: Tensor) -> Tensor:
        num_frames = x.shape[2]
        y = super().forward(fold_frames(x))  # (B*F, C_out, H', W')
        return unfold_frames(y, num_frames)  # (B, C_out, F, H', W')


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv, add the projected time embedding, GroupNorm-SiLU-conv, residual.

    Only `resnet_time_scale_shift == "default"` (additive time embedding) exists here; the
    UNet rejects other values before building any block.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        *,
        groups: int,
        eps: float,
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = FrameConv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = FrameConv2d(out_channels, out_channels, kernel_size=3, padding=1)
        # A 1x1 projection of the residual exists only when the channel count changes.
        self.conv_shortcut = (
            FrameConv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )
        self.output_scale_factor = output_scale_factor

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        # x (B, C_in, F, H, W); temb (B, T)
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, F, H, W)
        t = self.time_emb_proj(F.silu(temb))  # (B, C_out)
        h = h + t[:, :, None, None, None]
        h = self.conv2(F.silu(self.norm2(h)))  # (B, C_out, F, H, W)
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = shortcut + h
        if self.output_scale_factor != 1.0:  # static config value; 1.0 everywhere in LatentSync
            out = out / self.output_scale_factor
        return out


class Downsample(nn.Module):
    """Stride-2 3x3 conv per frame: (B, C, F, H, W) -> (B, C, F, H/2, W/2)."""

    def __init__(self, channels: int, padding: int):
        super().__init__()
        if padding != 1:
            # padding 0 needs an asymmetric pad that LatentSync never uses.
            raise ValueError(f"downsample_padding={padding} is not supported (LatentSync uses 1)")
        self.conv = FrameConv2d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x spatial upsampling (frames untouched), then a 3x3 conv per frame."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = FrameConv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        # x (B, C, F, H, W) -> (B, C, F, *size). `size` is the spatial size of the skip tensor
        # this output meets: 2x (H, W) when they are even, which then equals scale_factor=2
        # exactly, and the right size when an odd side was rounded up on the way down.
        # Nearest interpolation copies values, so it is exact in every dtype (bf16 included).
        return self.conv(upsample_nearest(x, size))
