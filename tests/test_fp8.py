"""fp8 linears (fastsync.accel.fp8) on the CPU, whose torch has rowwise-scaled fp8 GEMMs too.

Two claims: the module computes exactly its stated rounding (e4m3 operands with per-row
scales, fp32 accumulation), within fp32 summation order, 1e-5 of the output's scale; and
swapped into the UNet it changes the output by what that rounding predicts, not more.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastsync.accel import fp8
from fastsync.config import UNET_PRESETS
from fastsync.models.attention import SpatialTransformer
from fastsync.models.loading import random_unet
from fastsync.models.motion_module import MotionModule

pytestmark = pytest.mark.skipif(not fp8.supported(torch.device("cpu")), reason="this torch has no CPU fp8 GEMM")


def dequantized(x: torch.Tensor) -> torch.Tensor:
    q, scale = fp8.quantize_rows(x)
    return q.float() * scale


def snr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    return 10 * math.log10(reference.pow(2).mean().item() / (reference - other).pow(2).mean().item())


def test_the_fp8_linear_computes_its_rounding_and_only_that():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(2, 5, 64) * torch.logspace(-2, 2, 64)  # rows and columns of unlike scales
    ours = fp8.Fp8Linear(linear)(x)
    assert ours.shape == (2, 5, 48) and ours.dtype == torch.float32
    simulated = F.linear(dequantized(x.reshape(-1, 64)), dequantized(linear.weight.detach()), linear.bias)
    scale = simulated.abs().max().item()
    torch.testing.assert_close(ours.reshape(-1, 48), simulated, rtol=0, atol=1e-5 * scale)
    # and the rounding is there: e4m3 keeps 3 mantissa bits, about 20-30 dB of SNR
    plain = linear(x)
    assert 15 < snr_db(plain, ours) < 40


def test_rows_are_scaled_one_by_one():
    x = torch.tensor([[1e-3, -2e-3, 4e-3] + [0.0] * 13, [300.0, -1000.0, 5.0] + [0.0] * 13])
    q, scale = fp8.quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (2, 1)
    assert q.float().abs().amax(dim=1).tolist() == [448.0, 448.0]  # each row's largest value maps to e4m3's
    torch.testing.assert_close(q.float() * scale, x, rtol=0.07, atol=0)


def test_convert_linears_swaps_the_transformer_linears_only():
    unet = random_unet(UNET_PRESETS["tiny"], seed=5).eval()
    inside = (SpatialTransformer, MotionModule)
    eligible = sum(1 for block in unet.modules() if isinstance(block, inside)
                   for m in block.modules() if type(m) is nn.Linear and fp8.eligible(m))
    g = torch.Generator().manual_seed(0)
    sample, audio = torch.randn(2, 13, 4, 16, 16, generator=g), torch.randn(8, 50, 384, generator=g)
    with torch.no_grad():
        plain = unet(sample, torch.tensor(500), audio)
        assert fp8.convert_linears(unet, inside) == eligible > 20
        ours = unet(sample, torch.tensor(500), audio)
    left = [n for n, m in unet.named_modules() if type(m) is nn.Linear]
    assert left and all(n.startswith("time_embedding") or ".time_emb_proj" in n for n in left), left[:5]
    # 24 dB per forward on the full-size UNet (bench/results/quant_error_cpu.json); a bound
    # well under fp16's ~66 dB and well over a broken swap's ~0 dB
    assert 15 < snr_db(plain, ours) < 45
