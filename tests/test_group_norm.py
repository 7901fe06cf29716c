"""accel.group_norm: GroupNorm from per-channel moments equals PyTorch's GroupNorm.

The swapped module computes this way where it is compiled (traced here with Dynamo's eager
backend, tests/traced.py) and is PyTorch's GroupNorm bit for bit uncompiled.

The group's mean and variance are rebuilt exactly from its channels' (Chan's formula), so
in fp32 the two differ only in summation order. Checked on 4D (the VAE, per-frame norms)
and 5D (the UNet's ResNets: one mean over all frames) tensors, both memory layouts, with
and without the affine parameters, and on inputs whose mean dwarfs their spread (where a
sum-of-squares variance would lose its digits).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastsync.accel import group_norm
from traced import traced

torch.set_num_threads(2)

TOLERANCE = 2e-5  # relative to the output's largest magnitude, fp32


def _input(shape, *, offset=0.0, seed=0, layout=torch.contiguous_format):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.rand(shape[1], generator=g).view(1, -1, *[1] * (len(shape) - 2))
    return (x + offset).contiguous(memory_format=layout)


def _close(out, ref):
    out, ref = out.detach(), ref.detach()
    assert out.shape == ref.shape and out.dtype == ref.dtype
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("shape,layout", [
    ((3, 64, 12, 10), torch.contiguous_format),
    ((3, 64, 12, 10), torch.channels_last),
    ((2, 32, 4, 6, 5), torch.channels_last_3d),
])
@pytest.mark.parametrize("groups", [32, 8])
def test_equals_group_norm(shape, layout, groups):
    x = _input(shape, layout=layout)
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
    out = group_norm.group_norm(x, groups, weight, bias, 1e-6)
    assert _close(out, F.group_norm(x, groups, weight, bias, 1e-6)) < TOLERANCE


def test_a_tensor_without_spatial_dims_is_pytorchs_case():
    x = _input((4, 32))
    assert _close(group_norm.group_norm(x, 8, None, None, 1e-5), F.group_norm(x, 8, None, None, 1e-5)) == 0


def test_without_affine_and_with_a_large_mean():
    x = _input((2, 16, 8, 8), offset=300.0, layout=torch.channels_last)
    out = group_norm.group_norm(x, 4, None, None, 1e-5)
    ref = F.group_norm(x.double(), 4, None, None, 1e-5).float()
    # float32 holds 300 + O(1) to about 3e-5 absolute; the per-channel variances do not
    # subtract large squares (PyTorch's fp32 CPU kernel is off by about 0.1 here)
    assert _close(out, ref) < 1e-4


def test_half_precision_matches_pytorchs_half_group_norm():
    x = _input((2, 64, 8, 8), seed=3, layout=torch.channels_last).half()
    weight, bias = torch.ones(64).half(), torch.zeros(64).half()
    out = group_norm.group_norm(x, 32, weight, bias, 1e-6)
    assert out.dtype == torch.float16
    ref = F.group_norm(x.float(), 32, weight.float(), bias.float(), 1e-6)
    assert _close(out.float(), ref) < 2e-3  # one fp16 rounding of the output


def test_use_in_swaps_plain_norms_and_keeps_their_state():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(4, 8), nn.Sequential(nn.GroupNorm(2, 8)), nn.SiLU())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    x = _input((2, 3, 5, 5), seed=4)
    before, state = model(x), {k: v.clone() for k, v in model.state_dict().items()}
    assert group_norm.use_in(model) == 2
    assert all(isinstance(m, group_norm.ChannelsLastGroupNorm) for m in (model[1], model[2][0]))
    assert model.state_dict().keys() == state.keys()
    assert torch.equal(model(x), before)  # uncompiled: PyTorch's own norms
    assert _close(traced(model)(x), before) < TOLERANCE  # compiled: from per-channel moments
    assert group_norm.use_in(model) == 0  # already swapped


@pytest.mark.parametrize("shape,layout", [((2, 32, 6, 5), torch.channels_last),
                                          ((2, 32, 3, 6, 5), torch.channels_last_3d)])
def test_swapped_norm_is_pytorchs_uncompiled_and_per_channel_compiled(shape, layout):
    norm = nn.GroupNorm(8, 32, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_(1, 0.3)
        norm.bias.normal_(0, 0.3)
    x = _input(shape, seed=6, layout=layout)
    plain = norm(x)
    norm.__class__ = group_norm.ChannelsLastGroupNorm
    assert torch.equal(norm(x), plain)  # a region forced eager launches PyTorch's kernel
    expected = group_norm.group_norm(x, 8, norm.weight, norm.bias, 1e-6)
    assert torch.equal(traced(norm)(x), expected)  # inside a compiled region: this module's math


class _Region(nn.Sequential):
    pass


def test_use_in_regions_leaves_norms_outside_the_regions():
    inner, head = nn.GroupNorm(2, 4), nn.GroupNorm(2, 4)
    model = nn.Sequential(_Region(nn.Conv2d(4, 4, 1), inner), _Region(nn.GroupNorm(2, 4)), head)
    assert group_norm.use_in_regions(model, (_Region,)) == 2
    assert type(inner) is group_norm.ChannelsLastGroupNorm
    assert type(head) is nn.GroupNorm
