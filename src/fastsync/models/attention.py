"""Attention: one dispatch point with named backends, and the spatial audio transformer.

Every attention in the UNet (spatial self-attention, audio cross-attention, temporal
self-attention in the motion modules) goes through `attention(q, k, v)`. The backend is
picked explicitly with `set_attention_backend` / `attention_backend`, never by probing
the machine at import time:

    "sdpa"  torch.nn.functional.scaled_dot_product_attention (default; what the reference
            calls, so fused flash / memory-efficient kernels are used where available).
    "math"  softmax(q k^T / sqrt(d)) v written out, with the softmax in fp32. A readable
            fallback and the yardstick the fused kernels are tested against.
    "sdpa-efficient"  SDPA restricted to its memory-efficient kernel (math where that
            kernel does not apply, e.g. on the CPU).

Fast kernels register further backends from outside the model (`register_backend`), e.g.
fastsync.accel.short_attention's "triton-short" for the motion modules' 16-frame sequences.

A layer may also carry its own choice (`Attention.backend`, None = the global one): fast
mode sets it on the motion modules only, from outside the model.

Both use the scale 1/sqrt(head_dim) and no mask, as every attention in LatentSync does.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from fastsync.models.resnet import fold_frames, unfold_frames

# ---------------------------------------------------------------------------------------
# 1. Dispatch
# ---------------------------------------------------------------------------------------


def _math_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q * scale, k.transpose(-1, -2))  # (B, nh, Lq, Lk), input dtype
    # fp16 logits can overflow exp(); the softmax itself is cheap, so do it in fp32.
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(weights, v)  # (B, nh, Lq, d)


def _sdpa_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def _sdpa_efficient_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    # The memory-efficient kernel only: fastest for the motion modules' 16-token sequences.
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        return F.scaled_dot_product_attention(q, k, v)


BACKENDS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "math": _math_attention,
    "sdpa": _sdpa_attention,
    "sdpa-efficient": _sdpa_efficient_attention,
}
DEFAULT_BACKEND = "sdpa"
_current_backend = DEFAULT_BACKEND


def register_backend(name: str, fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
    """Add a backend from outside the model code (fast kernels live in fastsync.accel)."""
    BACKENDS[name] = fn


def _check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}")
    return name


def set_attention_backend(name: str) -> None:
    """Select the backend used by every later `attention()` call that names none."""
    global _current_backend
    _current_backend = _check_backend(name)


def get_attention_backend() -> str:
    return _current_backend


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """`with attention_backend("math"): ...` - the previous backend is restored on exit."""
    global _current_backend
    previous = _current_backend
    _current_backend = _check_backend(name)
    try:
        yield
    finally:
        _current_backend = previous


def attention(q: Tensor, k: Tensor, v: Tensor, *, backend: str | None = None) -> Tensor:
    """Scaled dot-product attention. q (B, nh, Lq, d), k and v (B, nh, Lk, d) -> (B, nh, Lq, d)."""
    name = _current_backend if backend is None else _check_backend(backend)
    return BACKENDS[name](q, k, v)


# ---------------------------------------------------------------------------------------
# 2. Layers shared by the spatial transformer and the motion modules
# ---------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention: q from `x`, k/v from `context` (cross) or from `x` (self).

    Parameter names follow the checkpoint: to_q/to_k/to_v without bias, to_out.0 with bias.
    """

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        inner_dim = heads * head_dim
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        # A list so the key is `to_out.0`; the reference's `to_out.1` is a p=0 dropout.
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim)])
        self.backend: str | None = None  # None = the global backend; set from outside only

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)  # (B, nh, L, hd)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        # x (B, L, query_dim); context (B, S, context_dim) or None
        context = x if context is None else context
        q = self._split_heads(self.to_q(x))  # (B, nh, L, hd)
        k = self._split_heads(self.to_k(context))  # (B, nh, S, hd)
        v = self._split_heads(self.to_v(context))  # (B, nh, S, hd)
        out = attention(q, k, v, backend=self.backend)  # (B, nh, L, hd)
        out = out.transpose(1, 2).flatten(2)  # (B, L, inner_dim)
        return self.to_out[0](out)  # (B, L, query_dim)


class GEGLU(nn.Module):
    """Linear to 2*inner, then value * gelu(gate) (exact erf gelu, as diffusers' GEGLU)."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner_dim)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU MLP with a 4x hidden width. Keys `net.0.proj` and `net.2` as in the checkpoint."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner_dim = dim * mult
        # net.1 is a p=0 dropout in the reference: an Identity keeps the numbering.
        self.net = nn.ModuleList([GEGLU(dim, inner_dim), nn.Identity(), nn.Linear(inner_dim, dim)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.net[0](x)  # (..., 4*dim)
        return self.net[2](x)  # (..., dim)


# ---------------------------------------------------------------------------------------
# 3. Spatial transformer with audio cross-attention (the `attentions.N` of each block)
# ---------------------------------------------------------------------------------------


class TransformerBlock(nn.Module):
    """Pre-norm block: spatial self-attention, audio cross-attention, GEGLU MLP; each residual."""

    def __init__(self, dim: int, heads: int, head_dim: int, cross_attention_dim: int, add_audio_layer: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.add_audio_layer = add_audio_layer
        if add_audio_layer:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(dim, heads, head_dim, context_dim=cross_attention_dim)
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, audio: Tensor, null_rows: int = 0, duplicate: bool = False) -> Tensor:
        # x (B*F, H*W, C); audio (B*F, S, cross_attention_dim). See SpatialTransformer.forward
        # for null_rows and duplicate (then x holds the first half of the rows only).
        x = self.attn1(self.norm1(x)) + x
        if duplicate:
            x = torch.cat([x, x])  # (2*rows, H*W, C): the two equal halves of a CFG pair
        if self.add_audio_layer:
            x = self._cross_attention(x, audio, null_rows)
        x = self.ff(self.norm3(x)) + x
        return x

    def _cross_attention(self, x: Tensor, audio: Tensor, null_rows: int) -> Tensor:
        if null_rows == 0:
            return self.attn2(self.norm2(x), context=audio) + x
        # Rows whose audio is all zeros: to_k and to_v have no bias, so k = v = 0 there, the
        # attention output is exactly 0 whatever the weights, and attn2 gives to_out's bias.
        # Adding it is the same value as computing it, for half the work in a CFG pair.
        null, rest = x[:null_rows], x[null_rows:]
        attended = self.attn2(self.norm2(rest), context=audio[null_rows:]) + rest
        return torch.cat([null + self.attn2.to_out[0].bias, attended])


class SpatialTransformer(nn.Module):
    """Per-frame transformer over the H*W positions of a feature map, conditioned on audio.

    Each frame is normalised on its own (GroupNorm over (C, H, W), eps 1e-6) and attends to
    its own audio window: frame f of clip b uses `audio[b * F + f]`.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        *,
        num_groups: int,
        cross_attention_dim: int,
        add_audio_layer: bool,
        num_layers: int = 1,
    ):
        super().__init__()
        # LatentSync passes `attention_head_dim` as the head count: head width = channels // heads.
        head_dim = channels // heads
        inner_dim = heads * head_dim
        self.norm = nn.GroupNorm(num_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [
                TransformerBlock(inner_dim, heads, head_dim, cross_attention_dim, add_audio_layer)
                for _ in range(num_layers)
            ]
        )
        self.proj_out = nn.Conv2d(inner_dim, channels, kernel_size=1)

    def forward(self, x: Tensor, audio: Tensor, null_rows: int = 0, duplicate: bool = False) -> Tensor:
        """x (B, C, F, H, W), audio (B*F, S, D) -> (B, C, F, H, W).

        null_rows: the first null_rows rows of `audio` are known to be all zeros (the
        unconditional half of a CFG batch); their cross-attention is not computed (see
        TransformerBlock._cross_attention). 0 computes every row.
        duplicate: x is the first half of a batch whose two halves are equal (the stem of a
        CFG pair); the rows are computed once up to the first cross-attention, where audio
        first tells the halves apart, and the output has the full batch 2B.
        """
        # 1. fold frames into the batch: x (B, C, F, H, W) -> (B*F, C, H, W)
        num_frames = x.shape[2]
        frames = fold_frames(x)
        _, _, height, width = frames.shape
        # 2. per-frame norm, 1x1 projection, to tokens (B*F, H*W, inner)
        h = self.proj_in(self.norm(frames))
        h = h.flatten(2).transpose(1, 2)
        # 3. transformer blocks
        for i, block in enumerate(self.transformer_blocks):
            h = block(h, audio, null_rows, duplicate and i == 0)  # (B*F, H*W, inner)
        if duplicate:
            frames = torch.cat([frames, frames])
        # 4. back to a feature map, project, residual: (B*F, C, H, W) -> (B, C, F, H, W)
        h = h.transpose(1, 2).unflatten(2, (height, width))
        h = self.proj_out(h) + frames
        return unfold_frames(h, num_frames)
