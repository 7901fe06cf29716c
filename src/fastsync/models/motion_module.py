"""Temporal motion modules (AnimateDiff "Vanilla"): self-attention across the frames of a clip.

Every spatial position of every clip is an independent sequence of F frame tokens. Each
attention adds a fixed sinusoidal table to its input (the query/key/value side only; the
residual path stays unshifted), so attention can tell frames apart.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fastsync.config import MotionModuleConfig
from fastsync.models.attention import Attention, FeedForward
from fastsync.models.resnet import fold_frames


class SinusoidalPositions(nn.Module):
    """Transformer position table pe[0, p, 2i] = sin(p w_i), pe[0, p, 2i+1] = cos(p w_i),
    w_i = 10000^(-2i/dim).

    `pe` is a persistent buffer because the official checkpoint stores it
    (`...pos_encoder.pe`, shape (1, max_len, dim)); loading takes the stored values.
    """

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (max_len, 1)
        freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(position * freqs)
        pe[0, :, 1::2] = torch.cos(position * freqs)
        self.register_buffer("pe", pe)

    def forward(self, x: Tensor) -> Tensor:
        # x (N, F, dim): add the first F rows of the table
        return x + self.pe[:, : x.shape[1]]


class TemporalSelfAttention(Attention):
    """Self-attention over the frame axis, with the position table added to its input."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, position_encoding: bool, max_len: int):
        super().__init__(dim, heads, head_dim)
        self.pos_encoder = SinusoidalPositions(dim, max_len) if position_encoding else None

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        # x (B*H*W, F, dim)
        if self.pos_encoder is not None:
            x = self.pos_encoder(x)
        return super().forward(x)


class TemporalTransformerBlock(nn.Module):
    """One pre-norm temporal self-attention per entry of `attention_block_types`, then a GEGLU MLP."""

    def __init__(self, dim: int, heads: int, head_dim: int, cfg: MotionModuleConfig):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [
                TemporalSelfAttention(
                    dim,
                    heads,
                    head_dim,
                    position_encoding=cfg.temporal_position_encoding,
                    max_len=cfg.temporal_position_encoding_max_len,
                )
                for _ in cfg.attention_block_types
            ]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in cfg.attention_block_types])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        # x (B*H*W, F, dim)
        for attn, norm in zip(self.attention_blocks, self.norms):
            x = attn(norm(x)) + x
        x = self.ff(self.ff_norm(x)) + x
        return x


class TemporalTransformer(nn.Module):
    """Per-frame GroupNorm, token projection, temporal blocks, projection back, residual."""

    # The reference builds this norm with its own default of 32 groups, not the UNet's
    # `norm_num_groups` (the two agree in every LatentSync config).
    NUM_GROUPS = 32

    def __init__(self, channels: int, cfg: MotionModuleConfig):
        super().__init__()
        heads = cfg.num_attention_heads
        head_dim = channels // heads // cfg.temporal_attention_dim_div
        inner_dim = heads * head_dim
        self.max_frames = cfg.temporal_position_encoding_max_len if cfg.temporal_position_encoding else None
        # Set by fast mode's set-up on a GPU with channels_last (fastsync.accel.setup).
        # Off on the CPU, where oneDNN ran the tiny UNet 10-25 % slower with it on.
        self.keep_input_layout = False
        self.norm = nn.GroupNorm(self.NUM_GROUPS, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner_dim)
        self.transformer_blocks = nn.ModuleList(
            [
                TemporalTransformerBlock(inner_dim, heads, head_dim, cfg)
                for _ in range(cfg.num_transformer_block)
            ]
        )
        self.proj_out = nn.Linear(inner_dim, channels)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, frames, height, width = x.shape
        if self.max_frames is not None and frames > self.max_frames:
            raise ValueError(
                f"{frames} frames per clip, but the temporal position table has {self.max_frames} rows; "
                f"run the UNet on chunks of at most {self.max_frames} frames"
            )
        # 1. per-frame GroupNorm: statistics over (C, H, W) of each frame
        h = self.norm(fold_frames(x)).reshape(batch, frames, channels, height, width)
        # 2. one sequence of F tokens per spatial position: (B*H*W, F, C)
        h = h.permute(0, 3, 4, 1, 2).reshape(batch * height * width, frames, channels)
        h = self.proj_in(h)  # (B*H*W, F, inner)
        # 3. temporal transformer blocks
        for block in self.transformer_blocks:
            h = block(h)  # (B*H*W, F, inner)
        # 4. project back, return to (B, C, F, H, W), residual
        h = self.proj_out(h)  # (B*H*W, F, C)
        h = h.reshape(batch, height, width, frames, channels).permute(0, 4, 3, 1, 2)
        if self.keep_input_layout:
            # The same sum, but the result takes x's layout rather than the tokens' (B, H, W, F, C)
            # order: with channels_last_3d on a GPU every block then hands that layout to the
            # next, and the skip concatenations and convolutions downstream copy nothing.
            return x + h
        return h + x  # the reference's order, and so its layout


class MotionModule(nn.Module):
    """The `motion_modules.N` entry of a block; the wrapper level exists for the key names."""

    def __init__(self, channels: int, cfg: MotionModuleConfig):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, cfg)

    def forward(self, x: Tensor) -> Tensor:
        # x (B, C, F, H, W) -> same shape
        return self.temporal_transformer(x)
