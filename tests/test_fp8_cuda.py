"""fp8 linears on the GPU, where `torch._scaled_mm` runs cuBLAS's fp8 GEMM (tests/test_fp8.py
checks the same rounding on the CPU). Eager and compiled (as inside fast mode's regions), the
module must compute its stated rounding, e4m3 operands with per-row scales, up to the fp16
rounding of its output."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastsync.accel import fp8

pytestmark = pytest.mark.requires_cuda

CUDA = torch.device("cuda")


def dequantized(x: torch.Tensor) -> torch.Tensor:
    q, scale = fp8.quantize_rows(x)
    return q.float() * scale


@pytest.mark.parametrize("compiled", [False, True])
def test_on_the_gpu_the_fp8_linear_computes_its_rounding(compiled):
    if not fp8.supported(CUDA):
        pytest.skip("fp8 GEMMs need compute capability 8.9 or later")
    torch.manual_seed(0)
    linear = nn.Linear(256, 128).to(CUDA, torch.float16)
    x = (torch.randn(4, 77, 256, device=CUDA) * torch.logspace(-2, 2, 256, device=CUDA)).half()
    module = fp8.Fp8Linear(linear)
    ours = (torch.compile(module, fullgraph=True) if compiled else module)(x)
    assert ours.shape == (4, 77, 128) and ours.dtype == torch.float16
    simulated = F.linear(dequantized(x.reshape(-1, 256)), dequantized(linear.weight.detach()), linear.bias.float())
    scale = simulated.abs().max().item()
    # fp16 keeps 11 bits: its rounding of the output is at most 2**-11 of the largest value
    torch.testing.assert_close(ours.float().reshape(-1, 128), simulated, rtol=0, atol=1e-3 * scale)
    plain = linear(x).float().reshape(-1, 128)
    assert (plain - simulated).abs().max().item() > 1e-3 * scale  # the rounding is there to be seen
