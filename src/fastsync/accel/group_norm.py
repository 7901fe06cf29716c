"""GroupNorm from per-channel moments, for channels-last tensors inside compiled regions.

Why by hand: inductor lowers `nn.GroupNorm` to one reduction per (sample, group) over
(C/G, spatial). On a channels_last tensor those C/G channels are a few contiguous values
between jumps of C, so each group's reduction reads memory in short strided pieces. In
the VAE at 512 px these norms took about 40 % of the encode and decode kernel time
(bench/results/vae_h200_regions.json).

Here the same statistics come in two steps that read memory in order:
1. the mean and variance of every channel over the spatial dims (`torch.var_mean`; with
   the channels contiguous this is a column reduction, which inductor reads coalesced);
2. the group's moments from its channels' moments (Chan's formula; exact, since every
   channel of a group has the same count): mean = mean of the means, variance = mean of
   the variances + the variance of the means.
Then x * scale + shift per (sample, channel), in fp32 as PyTorch's kernel computes it,
which inductor fuses with whatever follows (the SiLU of a ResNet).

Outside a compiled region this is about fifteen kernels instead of PyTorch's few, so fast
set-up swaps it in only inside regions (see `use_in_regions`), and the swapped norm computes
PyTorch's way whenever it runs uncompiled: a region forced eager (a job's short last chunk,
the warm-up's listing pass) launches PyTorch's kernels, not these.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastsync.accel.swap import swap_class, swap_in_regions


def group_norm(x: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """F.group_norm(x, groups, weight, bias, eps) for x (N, C, *spatial), by per-channel moments."""
    if x.dim() < 3:  # no spatial dims: each channel is one value, nothing to gather per channel
        return torch.nn.functional.group_norm(x, groups, weight, bias, eps)
    n, c = x.shape[:2]
    spatial = tuple(range(2, x.dim()))
    var_c, mean_c = torch.var_mean(x.float(), dim=spatial, correction=0)  # (N, C) each
    mean_c, var_c = mean_c.view(n, groups, c // groups), var_c.view(n, groups, c // groups)
    mean_g = mean_c.mean(-1, keepdim=True)
    var_g = (var_c + (mean_c - mean_g).square()).mean(-1, keepdim=True)
    scale = torch.rsqrt(var_g + eps).expand(n, groups, c // groups)  # (N, G, C/G)
    if weight is not None:
        scale = scale * weight.float().view(groups, c // groups)
    shift = -mean_g * scale
    if bias is not None:
        shift = shift + bias.float().view(groups, c // groups)
    shape = (n, c) + (1,) * len(spatial)
    return (x.float() * scale.reshape(shape) + shift.reshape(shape)).to(x.dtype)


class ChannelsLastGroupNorm(nn.GroupNorm):
    """nn.GroupNorm with the same parameters and state dict, computed by `group_norm` when
    compiled and by nn.GroupNorm itself otherwise."""

    def forward(self, x: Tensor) -> Tensor:
        if not torch.compiler.is_compiling():  # eager: PyTorch's fused kernel, fewer launches
            return super().forward(x)
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def use_in(module: nn.Module) -> int:
    """Every plain nn.GroupNorm under `module` computes by `group_norm` from now on (the class
    is swapped in place: parameters, hooks and the state dict stay); returns how many."""
    return swap_class(module, nn.GroupNorm, ChannelsLastGroupNorm)


def use_in_regions(model: nn.Module, kinds: tuple[type, ...]) -> int:
    """`use_in` for every module of one of `kinds` (the compiled regions); returns the count."""
    return swap_in_regions(model, kinds, use_in)
