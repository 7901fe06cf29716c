"""fp8 matmuls for the UNet's transformer linears (optional, off by default).

Half of a CFG forward's 35.25 TFLOP is in linears (attention projections, feed-forward;
`bench/results/quant_error_cpu.json`), and Hopper multiplies fp8 at twice its fp16 rate.
`Fp8Linear` keeps its weight in float8_e4m3fn with one scale per output channel, quantizes
each input row (token) to e4m3 with a scale of its own, and multiplies with
`torch._scaled_mm`, which accumulates in fp32 and applies both scales on the way out.

What it costs in accuracy was measured before building it, with this exact rounding
simulated on the full-size UNet (bench/bench_quant_error.py): per forward the noise
prediction keeps 24 dB of SNR against fp32 (fp16 rounding of the same linears: 66 dB),
and after a whole 20-step chunk the face crop keeps 52 dB PSNR (mouth 48 dB) against
fp32 (random weights, 256 px, CPU). Whether that keeps fast mode within the issue's 35 dB of
the reference, and what it buys on the GPU, is for bench_unet / bench_e2e to measure.

The rounding is written out in plain torch ops so that inductor fuses the row scaling
into the op before it, inside the compiled regions.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # the largest finite e4m3fn value
ALIGN = 16  # fp8 GEMMs need both matrix dimensions of the weight to be multiples of 16


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """(x / scale) in e4m3 and the fp32 scale, one per row of the last dimension."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
    return (x / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


class Fp8Linear(nn.Module):
    """`nn.Linear` with an e4m3 weight (per output channel scales) and e4m3 inputs (per row)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight", weight)  # (out, in) e4m3
        self.register_buffer("weight_scale", scale.reshape(1, -1))  # (1, out) fp32
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.out_dtype = linear.weight.dtype
        self.mm_dtype = gemm_out_dtype(linear.weight.device, self.out_dtype)

    def forward(self, x: Tensor) -> Tensor:
        rows, x_scale = quantize_rows(x.reshape(-1, self.in_features))
        out = torch._scaled_mm(rows, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale,
                               out_dtype=self.mm_dtype)
        if self.mm_dtype != self.out_dtype:
            out = out.to(self.out_dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def eligible(linear: nn.Linear) -> bool:
    return linear.in_features % ALIGN == 0 and linear.out_features % ALIGN == 0


def convert_linears(model: nn.Module, inside: tuple[type, ...]) -> int:
    """Replace every eligible nn.Linear within modules of the `inside` classes; returns how many.
    The time embedding's linears (two rows a forward) and the convolutions stay as they are."""
    count = 0
    for block in [m for m in model.modules() if isinstance(m, inside)]:
        for parent in block.modules():
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear and eligible(child):
                    setattr(parent, name, Fp8Linear(child))
                    count += 1
    return count


@functools.cache
def gemm_out_dtype(device: torch.device, wanted: torch.dtype) -> torch.dtype:
    """`wanted` where the rowwise-scaled GEMM can write it, else bf16 (older cuBLAS and the
    CUTLASS fallback wrote only bf16 with row scales); the caller casts."""
    try:
        _probe(device, wanted)
    except (RuntimeError, NotImplementedError):
        return torch.bfloat16
    return wanted


def _probe(device: torch.device, out_dtype: torch.dtype) -> None:
    one = torch.ones(16, 16, device=device).to(E4M3)
    scale = torch.ones(16, 1, device=device)
    torch._scaled_mm(one, one.t(), scale_a=scale, scale_b=scale.t(), out_dtype=out_dtype)


def supported(device: torch.device) -> bool:
    """fp8 GEMMs: CUDA compute capability 8.9 (Ada) or 9.0 (Hopper) and later, or a CPU torch that has them."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 9)
    try:
        _probe(device, torch.bfloat16)
    except (RuntimeError, NotImplementedError):
        return False
    return True
