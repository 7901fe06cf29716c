"""A Triton kernel for GEGLU: the feed-forward's projection and its gate in one pass.

Why by hand: GEGLU is `value * gelu(gate)` where value and gate are the two halves of one
linear layer's output, (M, 2N) for an (M, N) result. cuBLAS writes all 2N columns and a
pointwise kernel reads them back to write N: at the 64x64 level of a CFG forward that is
671 MB written, then read, per feed-forward, and inductor's pointwise kernels for it took
5.6 of 88.4 ms (bench/results/unet_h200_tail.json). No GEMM epilogue of cuBLAS or of
inductor's templates can join two column ranges of one output. Here one program computes
the same (BLOCK_M, BLOCK_N) tile of both halves, with two accumulators, and applies the
gate before anything leaves the chip, so only the (M, N) result is written.

Rounding follows the eager layer step by step: each half's bias is added in fp32 and the
sum rounded to the input dtype (as cuBLAS's bias epilogue does), gelu (exact, erf) is
computed in fp32 from that and rounded, then the product is rounded. Only the order of
the K-sum differs from cuBLAS (tests/test_geglu.py states the tolerance).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) by K, the layer's input width: the
# fastest of bench/bench_geglu.py's sweep on an H100 (bench/results/geglu_h100.json).
CONFIGS = {320: (128, 128, 32, 8, 4, "tma"), 640: (128, 128, 32, 8, 4, "tma"), 1280: (128, 128, 32, 8, 4, "tma")}
DEFAULT_CONFIG = (128, 128, 32, 8, 4, "tma")


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
    def geglu_kernel(x_ptr, w_ptr, b_ptr, o_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GROUP_M: tl.constexpr, EVEN_K: tl.constexpr):
        # Programs walk the output in groups of GROUP_M row tiles, so the weight tiles a
        # group shares stay in L2 while its rows are read once.
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * tiles_n
        first_m = (pid // per_group) * GROUP_M
        group_rows = min(tiles_m - first_m, GROUP_M)
        tile_m = first_m + (pid % per_group) % group_rows
        tile_n = (pid % per_group) // group_rows

        rows = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
        ks = tl.arange(0, BLOCK_K)
        row_ok = rows < M
        col_ok = cols < N
        x_tile = x_ptr + rows[:, None] * stride_xm + ks[None, :]
        value_tile = w_ptr + cols[None, :] * stride_wn + ks[:, None]  # (BLOCK_K, BLOCK_N): w^T
        gate_tile = value_tile + N * stride_wn  # the gate half: rows N..2N of the weight
        acc_value = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            if EVEN_K:
                x = tl.load(x_tile, mask=row_ok[:, None], other=0.0)
                wv = tl.load(value_tile, mask=col_ok[None, :], other=0.0)
                wg = tl.load(gate_tile, mask=col_ok[None, :], other=0.0)
            else:
                k_ok = (k + ks) < K
                x = tl.load(x_tile, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                wv = tl.load(value_tile, mask=col_ok[None, :] & k_ok[:, None], other=0.0)
                wg = tl.load(gate_tile, mask=col_ok[None, :] & k_ok[:, None], other=0.0)
            acc_value = tl.dot(x, wv, acc_value)
            acc_gate = tl.dot(x, wg, acc_gate)
            x_tile += BLOCK_K
            value_tile += BLOCK_K
            gate_tile += BLOCK_K

        dtype = o_ptr.dtype.element_ty
        value = (acc_value + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]).to(dtype)
        gate = (acc_gate + tl.load(b_ptr + N + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]).to(dtype)
        gate = gate.to(tl.float32)
        gelu = (0.5 * gate * (1.0 + tl.erf(gate * 0.7071067811865476))).to(dtype)
        out = (value.to(tl.float32) * gelu.to(tl.float32)).to(dtype)
        tl.store(o_ptr + rows[:, None] * stride_om + cols[None, :], out, mask=row_ok[:, None] & col_ok[None, :])

    # The same tile loop with TMA: the Hopper copy engine brings each operand tile into
    # shared memory (asynchronously, out-of-range rows as zeros), and the result tile leaves
    # the same way.
    @triton.jit
    def geglu_tma_kernel(x_desc, w_desc, b_ptr, o_desc, M, N, K,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         GROUP_M: tl.constexpr):
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * tiles_n
        first_m = (pid // per_group) * GROUP_M
        group_rows = min(tiles_m - first_m, GROUP_M)
        off_m = (first_m + (pid % per_group) % group_rows) * BLOCK_M
        off_n = ((pid % per_group) // group_rows) * BLOCK_N
        acc_value = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            x = x_desc.load([off_m, k])
            acc_value = tl.dot(x, w_desc.load([off_n, k]).T, acc_value)
            acc_gate = tl.dot(x, w_desc.load([N + off_n, k]).T, acc_gate)
        cols = off_n + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        dtype = o_desc.dtype
        value = (acc_value + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]).to(dtype)
        gate = (acc_gate + tl.load(b_ptr + N + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]).to(dtype)
        gate = gate.to(tl.float32)
        gelu = (0.5 * gate * (1.0 + tl.erf(gate * 0.7071067811865476))).to(dtype)
        o_desc.store([off_m, off_n], (value.to(tl.float32) * gelu.to(tl.float32)).to(dtype))

    # Persistent: one program per SM walks tiles; flattened, the next tile's loads are
    # issued while this one's epilogue (gelu's erf, two tiles of it) still runs.
    @triton.jit
    def geglu_persistent_kernel(x_desc, w_desc, b_ptr, o_desc, M, N, K,
                                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                GROUP_M: tl.constexpr, PROGRAMS: tl.constexpr, WARP_SPECIALIZE: tl.constexpr):
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(N, BLOCK_N)
        k_tiles = tl.cdiv(K, BLOCK_K)
        per_group = GROUP_M * tiles_n
        dtype = o_desc.dtype
        for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, PROGRAMS, flatten=True,
                             warp_specialize=WARP_SPECIALIZE):
            first_m = (tile // per_group) * GROUP_M
            group_rows = min(tiles_m - first_m, GROUP_M)
            off_m = (first_m + (tile % per_group) % group_rows) * BLOCK_M
            off_n = ((tile % per_group) // group_rows) * BLOCK_N
            acc_value = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for kk in range(k_tiles):
                k = kk * BLOCK_K
                x = x_desc.load([off_m, k])
                acc_value = tl.dot(x, w_desc.load([off_n, k]).T, acc_value)
                acc_gate = tl.dot(x, w_desc.load([N + off_n, k]).T, acc_gate)
            cols = off_n + tl.arange(0, BLOCK_N)
            col_ok = cols < N
            value = (acc_value + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]).to(dtype)
            gate = (acc_gate + tl.load(b_ptr + N + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]).to(dtype)
            gate = gate.to(tl.float32)
            gelu = (0.5 * gate * (1.0 + tl.erf(gate * 0.7071067811865476))).to(dtype)
            o_desc.store([off_m, off_n], (value.to(tl.float32) * gelu.to(tl.float32)).to(dtype))

    return triton, geglu_kernel, geglu_tma_kernel, geglu_persistent_kernel


_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _build()
    return _KERNEL


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: a few programs, so the tile loop runs more than once
    return torch.cuda.get_device_properties(device).multi_processor_count


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter (tests without a GPU)


def _check(x: Tensor, weight: Tensor, bias: Tensor) -> None:
    if not (x.is_cuda and weight.is_cuda and bias.is_cuda) and not _interpreted():
        raise ValueError("the GEGLU kernel runs on CUDA tensors only")
    if weight.dim() != 2 or weight.shape[0] % 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight {tuple(weight.shape)} must be (2N, {x.shape[-1]}) for input {tuple(x.shape)}")
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"bias {tuple(bias.shape)} must be ({weight.shape[0]},)")
    if weight.stride(1) != 1 or x.stride(-1) != 1:
        raise ValueError("the input's and the weight's last dimension must be contiguous")


def launch(x: Tensor, weight: Tensor, bias: Tensor, *, config: tuple | None = None) -> Tensor:
    """x (..., K), weight (2N, K), bias (2N,) -> (..., N): value * gelu(gate) of x @ weight^T + bias.

    `config` (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) is for the benchmark's
    sweep; None = the tuned choice for K.
    """
    _check(x, weight, bias)
    lead, k = x.shape[:-1], x.shape[-1]
    rows = x.reshape(-1, k)  # a view for the model's (B, L, C) activations
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    m, n = rows.shape[0], weight.shape[0] // 2
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    block_m, block_n, block_k, num_warps, num_stages, tma = config or CONFIGS.get(k, DEFAULT_CONFIG)
    triton, kernel, tma_kernel, persistent_kernel = _kernel()
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        descriptors = (TensorDescriptor.from_tensor(rows, [block_m, block_k]),
                       TensorDescriptor.from_tensor(weight, [block_n, block_k]), bias,
                       TensorDescriptor.from_tensor(out, [block_m, block_n]), m, n, k)
        blocks = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8,
                      num_warps=num_warps, num_stages=num_stages)
        if tma == "tma":
            tma_kernel[(tiles,)](*descriptors, **blocks)
        else:  # "persistent" or "persistent_ws", with programs per SM after a colon
            kind, _, per_sm = tma.partition(":")
            programs = min(tiles, _sm_count(x.device) * int(per_sm or 1))
            persistent_kernel[(programs,)](*descriptors, **blocks, PROGRAMS=programs,
                                           WARP_SPECIALIZE=kind == "persistent_ws")
    else:
        kernel[(tiles,)](rows, weight, bias, out, m, n, k, rows.stride(0), weight.stride(0), out.stride(0),
                         BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8, EVEN_K=k % block_k == 0,
                         num_warps=num_warps, num_stages=num_stages)
    return out.view(*lead, n)


# An opaque custom op, so torch.compile keeps the kernel as one node of a region's graph
# (and CUDA graphs capture it like any other launch); the norm before it and the
# projection after it stay inductor's.
@torch.library.custom_op("fastsync::geglu", mutates_args=())
def geglu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return launch(x, weight, bias)


@geglu.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0] // 2)


def reference(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The eager layer, for tests and benchmarks: diffusers' GEGLU on the same parameters."""
    value, gate = F.linear(x, weight, bias).chunk(2, dim=-1)
    return value * F.gelu(gate)


class FusedGEGLU(nn.Module):
    """Drop-in for fastsync.models.attention.GEGLU: the same `proj` parameter and state dict;
    on CUDA the fused kernel, elsewhere (and for other dtypes) the layer's own math."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
            return geglu(x, self.proj.weight, self.proj.bias)
        return reference(x, self.proj.weight, self.proj.bias)
