"""A candidate fast path, measured before it goes into the model: the self-attentions'
q, k and v projections as one GEMM.

The spatial transformers' `attn1` and the motion modules' temporal attentions project
the same input three times (50 GEMMs of 131072 x 320 x 320 at the 64x64 latents alone,
bench/results/unet_gemm_counts.json). One GEMM against the three weights stacked reads
the input once instead of three times; q, k and v become column slices of its output,
which the attention kernels read in place (only the head dimension must be contiguous).

The checkpoint's `to_q`/`to_k`/`to_v` weights become views into the stacked weight, so
memory does not grow and the parameters keep their names. `bench_unet --fused-qkv` times it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastsync.models.attention import Attention, TransformerBlock
from fastsync.models.motion_module import TemporalSelfAttention


class _FusedProjection:
    """Mixed in before an Attention class: self-attention through `to_qkv`."""

    def project(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        if context is not None:
            return super().project(x, context)
        return self.to_qkv(x).chunk(3, dim=-1)


_FUSED_CLASSES: dict[type, type] = {}


def _fused_class(cls: type) -> type:
    if cls not in _FUSED_CLASSES:
        _FUSED_CLASSES[cls] = type(f"Fused{cls.__name__}", (_FusedProjection, cls), {})
    return _FUSED_CLASSES[cls]


def self_attentions(model: nn.Module) -> list[Attention]:
    """The attentions that only ever attend to their own input."""
    found = [m for m in model.modules() if isinstance(m, TemporalSelfAttention)]
    found += [m.attn1 for m in model.modules() if isinstance(m, TransformerBlock)]
    return found


@torch.no_grad()
def fuse_qkv(model: nn.Module) -> int:
    """Stack each self-attention's q/k/v weights into one `to_qkv` linear; returns how many."""
    modules = self_attentions(model)
    for module in modules:
        weight = torch.cat([module.to_q.weight, module.to_k.weight, module.to_v.weight])  # (3 inner, dim)
        inner = module.to_q.out_features
        module.to_qkv = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device,
                                  dtype=weight.dtype)
        module.to_qkv.weight = nn.Parameter(weight)
        for i, linear in enumerate((module.to_q, module.to_k, module.to_v)):
            linear.weight = nn.Parameter(weight[i * inner:(i + 1) * inner])
        module.__class__ = _fused_class(type(module))
    return len(modules)
