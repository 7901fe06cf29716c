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

    # The sequence length is a plain argument, not a constant, and not specialized on (Triton
    # would key a build on "divisible by 16"): a job's short last chunk, 1-15 frames, then
    # reuses the 16-frame build instead of compiling three more kernels mid-job (2.2 s of the
    # first job's last chunk on an H200, bench/results/README.md).
    @triton.jit(do_not_specialize=["L"])
    def short_attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr,
                               q_sn, q_sh, q_sl, k_sn, k_sh, k_sl, v_sn, v_sh, v_sl, o_sn, o_sh, o_sl,
                               scale, L, HEADS: tl.constexpr, D: tl.constexpr,
                               BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
        # One program = one (sequence n, head h); heads vary fastest, so neighbouring
        # programs read neighbouring bytes of the same token rows.
        pid = tl.program_id(0)
        n = pid // HEADS
        h = pid % HEADS
        rows = tl.arange(0, BLOCK_L)
        cols = tl.arange(0, BLOCK_D)
        mask = (rows[:, None] < L) & (cols[None, :] < D)
        q = tl.load(q_ptr + n * q_sn + h * q_sh + rows[:, None] * q_sl + cols[None, :], mask=mask, other=0.0)
        k = tl.load(k_ptr + n * k_sn + h * k_sh + rows[:, None] * k_sl + cols[None, :], mask=mask, other=0.0)
        v = tl.load(v_ptr + n * v_sn + h * v_sh + rows[:, None] * v_sl + cols[None, :], mask=mask, other=0.0)
        scores = tl.dot(q, tl.trans(k)) * scale  # (BLOCK_L, BLOCK_L), fp32
        scores = tl.where(rows[None, :] < L, scores, float("-inf"))  # padded keys get no weight
        scores = scores - tl.max(scores, axis=1)[:, None]
        weights = tl.exp(scores)
        weights = weights / tl.sum(weights, axis=1)[:, None]
        out = tl.dot(weights.to(v.dtype), v)  # (BLOCK_L, BLOCK_D), fp32
        tl.store(o_ptr + n * o_sn + h * o_sh + rows[:, None] * o_sl + cols[None, :],
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
    if q.shape[2] > MAX_SEQUENCE:
        raise ValueError(f"{q.shape[2]} tokens per sequence; this kernel takes at most {MAX_SEQUENCE}")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise ValueError("the head dimension must be contiguous")


def launch(q: Tensor, k: Tensor, v: Tensor, *, num_warps: int | None = None) -> Tensor:
    """q, k, v (B, nh, L, d), any strides with d contiguous -> (B, nh, L, d).

    The output's memory is (B, L, nh, d), so the caller's `transpose(1, 2).flatten(2)` back to
    tokens is a free view. `num_warps` is for the benchmark's sweep; None = the tuned choice.
    """
    _check(q, k, v)
    batch, heads, length, dim = q.shape
    out = torch.empty(batch, length, heads, dim, device=q.device, dtype=q.dtype).transpose(1, 2)
    triton, kernel = _kernel()
    block_l = max(16, triton.next_power_of_2(length))  # tl.dot needs tiles of at least 16
    block_d = max(16, triton.next_power_of_2(dim))
    if num_warps is None:  # the fastest per width on an H200 (bench/results/temporal_attention_h200.json)
        num_warps = 1 if block_d <= 128 else 2
    kernel[(batch * heads,)](
        q, k, v, out, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        1.0 / math.sqrt(dim), length, HEADS=heads, D=dim, BLOCK_L=block_l, BLOCK_D=block_d,
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
    # What torch.compile traces: the shape, dtype and (B, L, nh, d) memory of the output.
    batch, heads, length, dim = q.shape
    return q.new_empty(batch, length, heads, dim).transpose(1, 2)


def register() -> str:
    """Make the kernel an attention backend (fastsync.models.attention); returns its name."""
    from fastsync.models.attention import register_backend

    register_backend(BACKEND_NAME, short_attention)
    return BACKEND_NAME
