"""accel.glue: the UNet's head as a module of its own, and the layers between the blocks.

The attached head computes what `UNet3DConditionModel.head` computes (the same layers, the
same calls: equal bit for bit), leaves the module tree and the state dict as they were, and
follows the UNet through deepcopy and `.to()`. Fast set-up swaps the head's norm with the
regions' only where compile_glue and column_group_norm are both on. The compiled glue is
checked against eager on a GPU (tests/test_accel_cuda.py, test_compile_regions_matches_eager).
"""

import copy
import dataclasses

import pytest
import torch

from fastsync.accel import glue, group_norm
from fastsync.config import UNET_PRESETS
from fastsync.models.loading import random_unet
from fastsync.models.resnet import Upsample
from traced import traced

torch.set_num_threads(2)

CONFIG = dataclasses.replace(UNET_PRESETS["tiny"], block_out_channels=(64, 64, 64, 64))


def _inputs(seed=3, frames=4):
    g = torch.Generator().manual_seed(seed)
    half = torch.randn(1, 13, frames, 16, 16, generator=g)
    audio = torch.randn(frames, 50, 384, generator=g)
    return torch.cat([half, half]), torch.tensor(641), torch.cat([torch.zeros_like(audio), audio])


def _unet(seed=1):
    unet = random_unet(CONFIG, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a norm with weight 1 and bias 0 would hide swapped parameters
        unet.conv_norm_out.weight.copy_(1 + 0.3 * torch.randn(unet.conv_norm_out.weight.shape, generator=g))
        unet.conv_norm_out.bias.copy_(0.3 * torch.randn(unet.conv_norm_out.bias.shape, generator=g))
    return unet


@torch.no_grad()
def test_attached_head_computes_the_same_and_keeps_the_module_tree():
    unet = _unet()
    sample, t, audio = _inputs()
    before = unet(sample, t, audio, cfg_pair=True)
    keys, modules = list(unet.state_dict()), list(unet.modules())
    head = glue.attach_head(unet)
    assert unet.head is head and head.norm is unet.conv_norm_out and head.conv is unet.conv_out
    assert torch.equal(unet(sample, t, audio, cfg_pair=True), before)
    assert list(unet.state_dict()) == keys  # the checkpoint's names, nothing added
    assert list(unet.modules()) == modules
    assert glue.attach_head(unet) is head  # attached once


@torch.no_grad()
def test_head_follows_the_unet_through_deepcopy_and_to():
    unet = _unet()
    glue.attach_head(unet)
    twin = copy.deepcopy(unet)
    assert twin.head is not unet.head
    assert twin.head.norm is twin.conv_norm_out and twin.head.conv is twin.conv_out
    twin.to(torch.float64)
    assert twin.head.conv.weight.dtype == torch.float64 and unet.conv_out.weight.dtype == torch.float32
    x = torch.randn(1, CONFIG.block_out_channels[0], 2, 8, 8, dtype=torch.float64)
    assert torch.equal(twin.head(x), type(twin).head(twin, x))  # the model's own head, by its method


def test_glue_modules_are_the_upsamplers_and_the_head():
    unet = _unet()
    modules = glue.glue_modules(unet)
    upsamplers = [m for m in unet.modules() if isinstance(m, Upsample)]
    assert len(upsamplers) == len(CONFIG.block_out_channels) - 1
    assert modules[:-1] == upsamplers and modules[-1] is unet.head


@pytest.mark.parametrize("compile_glue,column_group_norm", [(True, True), (False, True), (True, False)])
@torch.no_grad()
def test_fast_set_up_swaps_the_heads_norm_where_the_options_say(compile_glue, column_group_norm):
    from fastsync.accel.setup import swap_in_unet_regions
    from fastsync.engine import FastOptions

    plain = _unet(seed=4)
    unet = copy.deepcopy(plain)
    fast = dataclasses.replace(FastOptions(), compile_glue=compile_glue, column_group_norm=column_group_norm,
                               split_linear_bias=False)
    swap_in_unet_regions(unet, fast)
    swapped = type(unet.conv_norm_out) is group_norm.ChannelsLastGroupNorm
    assert swapped == (compile_glue and column_group_norm)
    assert ("head" in unet.__dict__) == compile_glue
    for module in glue.glue_modules(unet) if compile_glue else []:
        traced(module)  # as compiled: the swapped norm computes from per-channel moments
    sample, t, audio = _inputs(seed=5)
    ref = plain(sample, t, audio, cfg_pair=True)
    out = unet(sample, t, audio, cfg_pair=True)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5  # fp32 summation order
