"""A Triton kernel for attention over very short sequences: the motion modules' 16 frames.

Why by hand: the temporal attention of a chunk is 2 x 4096 independent sequences of 16
tokens (at 64x64 latents), 8 heads of width 40/80/160. Its arithmetic is tiny; its cost
is reading q, k, v and writing the output once. SDPA's fused kernels tile for long
sequences, so at L = 16 most of a tile is idle: the memory-efficient kernel, the best of
them, runs at a seventh of the memory bandwidth (bench/results/attention_h200.json).
Here one program holds one whole (sequence, head) problem in registers: q k^T, an fp32
softmax and p v, with each input read once and the output written once.

The result equals SDPA up to fp16 rounding: scores and softmax in fp32 as in the fused
kernels, the probabilities rounded to the input dtype before p v, as they do
(tests/test_short_attention.py; the tolerance is stated there).
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

BACKEND_NAME = "triton-short"
MAX_SEQUENCE = 64  # a whole sequence lives in one tile; longer ones belong to SDPA's kernels


def available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def _build():
    import triton
    import triton.language as tl

    @triton.jit
    def short_attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr,
                               q_sb, q_sn, q_sh, q_sl, k_sb, k_sn, k_sh, k_sl,
                               v_sb, v_sn, v_sh, v_sl, o_sb, o_sn, o_sh, o_sl,
                               scale, inner, HEADS: tl.constexpr, L: tl.constexpr,
                               D: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
        # One program = one (sequence, head h); heads vary fastest, so neighbouring
        # programs read neighbouring bytes of the same token rows. Sequence i is (b, n) =
        # (i // inner, i % inner): two strides, for a batch of sequences that is not one
        # uniform stride in memory (the frames-major tokens of TemporalTransformer).
        pid = tl.program_id(0)
        seq = pid // HEADS
        h = pid % HEADS
        b = (seq // inner).to(tl.int64)
        n = (seq % inner).to(tl.int64)
        rows = tl.arange(0, BLOCK_L)
        cols = tl.arange(0, BLOCK_D)
        mask = (rows[:, None] < L) & (cols[None, :] < D)
        q = tl.load(q_ptr + b * q_sb + n * q_sn + h * q_sh + rows[:, None] * q_sl + cols[None, :], mask=mask,
                    other=0.0)
        k = tl.load(k_ptr + b * k_sb + n * k_sn + h * k_sh + rows[:, None] * k_sl + cols[None, :], mask=mask,
                    other=0.0)
        v = tl.load(v_ptr + b * v_sb + n * v_sn + h * v_sh + rows[:, None] * v_sl + cols[None, :], mask=mask,
                    other=0.0)
        scores = tl.dot(q, tl.trans(k)) * scale  # (BLOCK_L, BLOCK_L), fp32
        scores = tl.where(rows[None, :] < L, scores, float("-inf"))  # padded keys get no weight
        scores = scores - tl.max(scores, axis=1)[:, None]
        weights = tl.exp(scores)
        weights = weights / tl.sum(weights, axis=1)[:, None]
        out = tl.dot(weights.to(v.dtype), v)  # (BLOCK_L, BLOCK_D), fp32
        tl.store(o_ptr + b * o_sb + n * o_sn + h * o_sh + rows[:, None] * o_sl + cols[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=mask)

    return triton, short_attention_kernel


_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _build()
    return _KERNEL


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter (tests without a GPU)


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    if not (q.is_cuda and k.is_cuda and v.is_cuda) and not _interpreted():
        raise ValueError("the short-sequence attention kernel runs on CUDA tensors only; use 'sdpa' elsewhere")
    if q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"self-attention only: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.dim() not in (4, 5):
        raise ValueError(f"q, k, v must be (B, nh, L, d) or (B, S, nh, L, d); got {tuple(q.shape)}")
    if q.shape[-2] > MAX_SEQUENCE:
        raise ValueError(f"{q.shape[-2]} tokens per sequence; this kernel takes at most {MAX_SEQUENCE}")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise ValueError("the head dimension must be contiguous")


def empty_output(q: Tensor) -> Tensor:
    """The output tensor, its memory in the token order the caller goes back to for free:
    (B, L, nh, d) for 4D inputs (`transpose(1, 2).flatten(2)` is a view), (B, L, S, nh, d) for
    5D ones (frames-major tokens: `permute(0, 3, 1, 2, 4)` then flattening is a view)."""
    if q.dim() == 4:
        batch, heads, length, dim = q.shape
        return q.new_empty(batch, length, heads, dim).transpose(1, 2)
    batch, inner, heads, length, dim = q.shape
    return q.new_empty(batch, length, inner, heads, dim).permute(0, 2, 3, 1, 4)


def _sequence_strides(t: Tensor) -> tuple[int, int, int, int]:
    """(batch, sequence, head, token) strides; a 4D tensor is one batch of sequences."""
    if t.dim() == 4:
        return (0, *t.stride()[:3])
    return t.stride()[:4]


def launch(q: Tensor, k: Tensor, v: Tensor, *, num_warps: int | None = None) -> Tensor:
    """q, k, v (B, nh, L, d) or (B, S, nh, L, d), any strides with d contiguous -> the same shape.

    5D inputs are B x S sequences; their memory need not have one stride over (B, S).
    The output's memory is given by `empty_output`. `num_warps` is for the benchmark's sweep;
    None = the tuned choice.
    """
    _check(q, k, v)
    *_, heads, length, dim = q.shape
    sequences = q.shape[:-3].numel()
    inner = q.shape[1] if q.dim() == 5 else sequences
    out = empty_output(q)
    triton, kernel = _kernel()
    block_l = max(16, triton.next_power_of_2(length))  # tl.dot needs tiles of at least 16
    block_d = max(16, triton.next_power_of_2(dim))
    if num_warps is None:  # the fastest per width on an H200 (bench/results/temporal_attention_h200.json)
        num_warps = 1 if block_d <= 128 else 2
    kernel[(sequences * heads,)](
        q, k, v, out, *_sequence_strides(q), *_sequence_strides(k), *_sequence_strides(v), *_sequence_strides(out),
        1.0 / math.sqrt(dim), inner, HEADS=heads, L=length, D=dim, BLOCK_L=block_l, BLOCK_D=block_d,
        num_warps=num_warps,
    )
    return out


# An opaque custom op, so torch.compile keeps the kernel as one node of a region's graph
# (and CUDA graphs capture it like any other launch).
@torch.library.custom_op("fastsync::short_attention", mutates_args=())
def short_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return launch(q, k, v)


@short_attention.register_fake
def _(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    # What torch.compile traces: the shape, dtype and memory of the output.
    return empty_output(q)


def register() -> str:
    """Make the kernel an attention backend (fastsync.models.attention); returns its name."""
    from fastsync.models.attention import register_backend

    register_backend(BACKEND_NAME, short_attention)
    return BACKEND_NAME
