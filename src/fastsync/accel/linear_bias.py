"""Linear layers whose bias is added by the kernel that reads their output (compiled regions).

Why by hand: for fp16, inductor keeps a linear layer as one `addmm`, the bias in cuBLAS's
epilogue (torch 2.13 names this `keep_addmm_fused_for_half_dtypes`; the GPU image's torch
2.11 has no such switch, and its profiles show the same bias kernels). On the UNet's
short-K shapes those bias kernels are slow: inductor's own timing on an H200 gave
addmm(131072x320, 320x320) at 0.118 ms or more against 0.059 ms for the same product
without a bias (bench/results/unet_h200_gemm_autotune.json). Written as a product without
bias plus an add, the add fuses into the pointwise kernel or norm that reads the output
anyway (the residual add, GEGLU's gelu, the next LayerNorm), so the bias costs no pass
of its own. On an H100 the CFG forward took 94.2 against 97.8 ms
(bench/results/unet_h100_split_bias.json).

The price is one rounding: the product is rounded to fp16 before the bias is added (an
error of at most 2^-11 of the product per element), where the epilogue adds it in fp32
first. Uncompiled (a region forced eager: a job's short last chunk, the warm-up's listing
pass) the split would only add a kernel launch, so the layer is nn.Linear there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastsync.accel.swap import swap_class, swap_in_regions


class SplitBiasLinear(nn.Linear):
    """nn.Linear with the same parameters and state dict; compiled, the bias is a separate add."""

    def forward(self, x: Tensor) -> Tensor:
        if not torch.compiler.is_compiling():  # eager: one addmm, as nn.Linear
            return super().forward(x)
        return F.linear(x, self.weight) + self.bias


def use_in(module: nn.Module) -> int:
    """Every plain nn.Linear with a bias under `module` becomes a SplitBiasLinear (in place);
    returns how many. Layers without a bias are already a plain product."""
    return swap_class(module, nn.Linear, SplitBiasLinear, when=lambda m: m.bias is not None)


def use_in_regions(model: nn.Module, regions: tuple[type, ...]) -> int:
    """`use_in` for every module of one of `regions` (the compiled ones); returns the count."""
    return swap_in_regions(model, regions, use_in)
