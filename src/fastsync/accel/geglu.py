"""The feed-forward's GEGLU as one Triton kernel: the projection GEMM with value * gelu(gate)
done on its accumulators.

Why by hand: every transformer and motion module runs `Linear(d, 8d)`, splits the output
into value and gate halves and multiplies value by gelu(gate). cuBLAS writes the whole
(M, 8d) product and inductor's pointwise kernel reads it back to write (M, 4d): 36 calls
of that pointwise kernel took 5.3 ms of the 101 ms CFG forward on an H200
(bench/results/unet_h200_glue.json). Inductor cannot fuse it into the GEMM: each output
element needs two columns 4d apart. Here one program computes the matching value and
gate tiles of the product from the same loaded rows of x, and writes only the result.

Values: the value and gate sums (fp32 accumulators plus bias) are rounded to the input
dtype before the gelu, as cuBLAS's fp16 output is, and the gelu (exact, erf) and product
are computed in fp32 and rounded once, as inductor's kernel does. So the result differs
from the unfused path only by the GEMM's summation order (tests/test_geglu.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TileConfig:
    block_m: int = 128
    block_n: int = 64  # per half: the program holds BLOCK_N value and BLOCK_N gate columns
    block_k: int = 64
    group_m: int = 8  # programs sweep GROUP_M row tiles per column tile, so W stays in L2
    num_warps: int = 4
    num_stages: int = 4


DEFAULT_CONFIG = TileConfig()
# Sweep space of bench/bench_geglu.py; the per-shape winners on an H200 go into CONFIGS.
SWEEP = [
    TileConfig(128, 64, 64, 8, 4, 4),
    TileConfig(128, 64, 64, 8, 4, 3),
    TileConfig(128, 128, 64, 8, 8, 3),
    TileConfig(128, 128, 32, 8, 8, 4),
    TileConfig(64, 128, 64, 8, 4, 4),
    TileConfig(256, 64, 64, 8, 8, 3),
    TileConfig(128, 64, 32, 8, 4, 5),
    TileConfig(64, 64, 64, 8, 4, 4),
]
CONFIGS: dict[tuple[int, int], TileConfig] = {}  # (K, N) -> tuned config; empty: DEFAULT_CONFIG


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
    def geglu_kernel(x_ptr, w_ptr, b_ptr, o_ptr, M, N, K, x_sm, w_sn, o_sm,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GROUP_M: tl.constexpr):
        # x (M, K); w (2N, K): value rows 0..N-1, gate rows N..2N-1; o (M, N)
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * tiles_n
        first_m = (pid // per_group) * GROUP_M
        group_rows = min(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % group_rows
        pid_n = (pid % per_group) // group_rows

        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        ks = tl.arange(0, BLOCK_K)
        x_ptrs = x_ptr + rows[:, None] * x_sm + ks[None, :]  # (BLOCK_M, BLOCK_K)
        v_ptrs = w_ptr + cols[None, :] * w_sn + ks[:, None]  # (BLOCK_K, BLOCK_N): W^T's tile
        g_ptrs = v_ptrs + N * w_sn
        row_ok = rows[:, None] < M
        col_ok = cols[None, :] < N
        acc_v = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_ok = ks < K - k * BLOCK_K
            a = tl.load(x_ptrs, mask=row_ok & k_ok[None, :], other=0.0)
            wv = tl.load(v_ptrs, mask=k_ok[:, None] & col_ok, other=0.0)
            wg = tl.load(g_ptrs, mask=k_ok[:, None] & col_ok, other=0.0)
            acc_v = tl.dot(a, wv, acc_v)
            acc_g = tl.dot(a, wg, acc_g)
            x_ptrs += BLOCK_K
            v_ptrs += BLOCK_K
            g_ptrs += BLOCK_K
        dtype = o_ptr.dtype.element_ty
        bias_v = tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
        bias_g = tl.load(b_ptr + N + cols, mask=cols < N, other=0.0).to(tl.float32)
        value = (acc_v + bias_v[None, :]).to(dtype).to(tl.float32)  # what cuBLAS would have stored
        gate = (acc_g + bias_g[None, :]).to(dtype).to(tl.float32)
        out = value * (0.5 * gate * (1.0 + tl.erf(gate * 0.7071067811865476)))
        tl.store(o_ptr + rows[:, None] * o_sm + cols[None, :], out.to(dtype), mask=row_ok & col_ok)

    return triton, geglu_kernel


_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _build()
    return _KERNEL


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter (tests without a GPU)


def _check(x: Tensor, weight: Tensor, bias: Tensor) -> None:
    if not (x.is_cuda and weight.is_cuda and bias.is_cuda) and not _interpreted():
        raise ValueError("the fused GEGLU kernel runs on CUDA tensors only; use the module's own path elsewhere")
    if weight.dim() != 2 or weight.shape[0] % 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"GEGLU weight must be (2*inner, {x.shape[-1]}); got {tuple(weight.shape)}")
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"GEGLU bias must be ({weight.shape[0]},); got {tuple(bias.shape)}")
    if weight.stride(1) != 1 or x.stride(-1) != 1:
        raise ValueError("x and the weight must be contiguous along the input features")


def launch(x: Tensor, weight: Tensor, bias: Tensor, *, config: TileConfig | None = None) -> Tensor:
    """x (..., K), weight (2N, K), bias (2N,) -> (..., N) = value * gelu(gate) of x W^T + b.

    `config` is for the benchmark's sweep; None = the tuned table (CONFIGS) or the default.
    """
    _check(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])  # a view for the model's token-major activations
    m, k = rows.shape
    n = weight.shape[0] // 2
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    c = config or CONFIGS.get((k, n), DEFAULT_CONFIG)
    triton, kernel = _kernel()
    grid = (triton.cdiv(m, c.block_m) * triton.cdiv(n, c.block_n),)
    kernel[grid](rows, weight, bias, out, m, n, k, rows.stride(0), weight.stride(0), out.stride(0),
                 BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k, GROUP_M=c.group_m,
                 num_warps=c.num_warps, num_stages=c.num_stages)
    return out.view(*x.shape[:-1], n)


# An opaque custom op, so torch.compile keeps the kernel as one node of a region's graph
# (and CUDA graphs capture it like any other launch).
@torch.library.custom_op("fastsync::geglu", mutates_args=())
def geglu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return launch(x, weight, bias)


@geglu.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0] // 2)


def install(model: torch.nn.Module) -> int:
    """Route every GEGLU of `model` through the fused kernel (fast set-up, CUDA only);
    returns how many. The modules keep their parameters, so the checkpoint is untouched."""
    from fastsync.models.attention import GEGLU

    count = 0
    for module in model.modules():
        if isinstance(module, GEGLU):
            module.fused = True  # calls torch.ops.fastsync.geglu, registered above
            count += 1
    return count
