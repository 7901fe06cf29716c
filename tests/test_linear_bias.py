"""accel.linear_bias: a linear layer whose bias is a separate add equals nn.Linear.

The split applies where the layer is compiled (traced here with Dynamo's eager backend,
tests/traced.py); uncompiled, the swapped layer is nn.Linear bit for bit. In fp32 the two
differ only in when the bias is added (the product's rounding is the same to within fp32
summation order). In fp16 the product is rounded once more before the add, so the bound
there is one fp16 rounding of the output. Also: the swap keeps the state dict, leaves layers
without a bias alone, stays inside the regions, and a tiny UNet with its regions' linears
swapped computes what the plain one does.
"""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastsync.accel import linear_bias
from fastsync.accel.compile import REGIONS
from fastsync.config import UNET_PRESETS
from fastsync.models.loading import random_unet
from traced import trace_regions, traced

torch.set_num_threads(2)

TOLERANCE = 1e-6  # relative to the output's largest magnitude, fp32
FP16_ROUNDING = 2.0 ** -10  # the output rounded to fp16 twice: the product, then the sum


def _close(out, ref):
    return float((out - ref).abs().max() / ref.abs().max())


def _linear(n_in=48, n_out=40, *, bias=True, seed=0):
    layer = nn.Linear(n_in, n_out, bias=bias)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) / n_in ** 0.5)
        if bias:
            layer.bias.copy_(torch.randn(n_out, generator=g))  # large enough to matter
    return layer


def _input(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_equals_linear_in_fp32():
    layer, x = _linear(), _input(3, 17, 48)
    plain = layer(x)
    layer.__class__ = linear_bias.SplitBiasLinear
    assert torch.equal(layer(x), plain)  # uncompiled: nn.Linear's own call
    out = traced(layer)(x)
    assert torch.equal(out, F.linear(x, layer.weight) + layer.bias)  # compiled: the split
    assert _close(out, plain) < TOLERANCE


@torch.no_grad()
def test_fp16_is_within_one_more_rounding():
    layer, x = _linear(seed=2), _input(64, 48, seed=3)
    exact = layer.double()(x.double())
    layer = layer.half()
    layer.__class__ = linear_bias.SplitBiasLinear
    out = traced(layer)(x.half())
    assert out.dtype == torch.float16
    assert torch.equal(out, F.linear(x.half(), layer.weight) + layer.bias)
    assert _close(out.double(), exact) < FP16_ROUNDING


@torch.no_grad()
def test_use_in_swaps_linears_with_a_bias_and_keeps_their_state():
    with_bias, without_bias = _linear(8, 8, seed=4), _linear(8, 8, bias=False, seed=5)
    model = nn.Sequential(with_bias, nn.GELU(), nn.Sequential(without_bias, _linear(8, 4, seed=6)))
    x = _input(5, 8, seed=7)
    before, keys = model(x), model.state_dict().keys()
    assert linear_bias.use_in(model) == 2
    assert type(with_bias) is linear_bias.SplitBiasLinear and type(model[2][1]) is linear_bias.SplitBiasLinear
    assert type(without_bias) is nn.Linear  # already a plain product
    assert model.state_dict().keys() == keys
    assert _close(model(x), before) < TOLERANCE
    assert linear_bias.use_in(model) == 0  # already swapped


class _Region(nn.Sequential):
    pass


def test_use_in_regions_leaves_linears_outside_the_regions():
    inner, head = _linear(4, 4), _linear(4, 4, seed=8)
    model = nn.Sequential(_Region(inner, nn.SiLU()), head)
    assert linear_bias.use_in_regions(model, (_Region,)) == 1
    assert type(inner) is linear_bias.SplitBiasLinear
    assert type(head) is nn.Linear


@pytest.mark.parametrize("cfg_pair", [False, True])
@torch.no_grad()
def test_tiny_unet_with_swapped_regions_equals_plain(cfg_pair):
    config = dataclasses.replace(UNET_PRESETS["tiny"], block_out_channels=(64, 64, 64, 64))
    plain = random_unet(config, seed=9)
    with torch.no_grad():  # non-zero biases everywhere, so a dropped or doubled bias shows
        for name, p in plain.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.2)
    swapped = copy.deepcopy(plain)
    assert linear_bias.use_in_regions(swapped, REGIONS) > 0
    assert sum(type(m) is linear_bias.SplitBiasLinear for m in swapped.modules()) > 0
    g = torch.Generator().manual_seed(10)
    half = torch.randn(1, 13, 4, 16, 16, generator=g)
    audio = torch.randn(4, 50, 384, generator=g)
    sample, audio = torch.cat([half, half]), torch.cat([torch.zeros_like(audio), audio])
    t = torch.tensor(781)
    ref = plain(sample, t, audio, cfg_pair=cfg_pair)
    assert torch.equal(swapped(sample, t, audio, cfg_pair=cfg_pair), ref)  # uncompiled: the plain calls
    assert trace_regions(swapped, REGIONS) > 0
    assert _close(swapped(sample, t, audio, cfg_pair=cfg_pair), ref) < 1e-5  # fp32 summation order


@pytest.mark.parametrize("column_group_norm,split_linear_bias", [(True, True), (True, False), (False, True)])
def test_fast_set_up_swaps_what_the_options_say(column_group_norm, split_linear_bias):
    from fastsync.accel import group_norm
    from fastsync.accel.setup import swap_in_unet_regions
    from fastsync.engine import FastOptions

    unet = random_unet(dataclasses.replace(UNET_PRESETS["tiny"], block_out_channels=(64, 64, 64, 64)), seed=11)
    fast = dataclasses.replace(FastOptions(), column_group_norm=column_group_norm, split_linear_bias=split_linear_bias)
    swap_in_unet_regions(unet, fast)
    kinds = {type(m) for m in unet.modules()}
    assert (group_norm.ChannelsLastGroupNorm in kinds) == column_group_norm
    assert (linear_bias.SplitBiasLinear in kinds) == split_linear_bias
    assert type(unet.time_embedding.linear_1) is nn.Linear  # outside the regions: stays plain
