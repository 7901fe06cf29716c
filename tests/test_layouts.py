"""Memory layouts between the UNet's blocks in fast mode (channels_last) and in reference mode.

In fast mode every region (ResNet block, spatial transformer, motion module) should take and
hand on channels_last_3d. A motion module used to return its tokens' (B, H, W, F, C) order;
the skip concatenations then mixed two layouts into a contiguous tensor, and the next
convolutions copied it back (8 copies outside the regions per forward, and 12 ResNet blocks
fed the wrong layout). Fast set-up turns the fix on for a GPU
(`accel.setup.keep_channels_last_between_blocks`); elsewhere, and in reference mode, the
motion modules keep the reference's order of the residual sum.
"""

from __future__ import annotations

import collections

import torch

from fastsync.accel.compile import REGIONS
from fastsync.accel.setup import keep_channels_last_between_blocks
from fastsync.accel.deepcache import DeepCache
from fastsync.config import UNET_PRESETS
from fastsync.models.loading import random_unet
from fastsync.models.motion_module import MotionModule

CL = torch.channels_last_3d


def _layout(t: torch.Tensor) -> str:
    if t.is_contiguous(memory_format=CL):
        return "channels_last_3d"
    return "contiguous" if t.is_contiguous() else f"strides {t.stride()}"


def _region_layouts(channels_last: bool, keep: bool = True) -> collections.Counter:
    unet = random_unet(UNET_PRESETS["tiny"], seed=0).eval()
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    if keep:
        assert keep_channels_last_between_blocks(unet) > 0
    seen: collections.Counter = collections.Counter()
    for module in unet.modules():
        if isinstance(module, REGIONS):
            module.register_forward_hook(
                lambda m, args, out: seen.update([(type(m).__name__, _layout(args[0]), _layout(out))]))
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 13, 4, 32, 32, generator=g)
    if channels_last:
        sample = sample.contiguous(memory_format=CL)
    with torch.no_grad():
        DeepCache(unet, 3)(sample, torch.tensor(500), torch.randn(8, 50, 384, generator=g), 0)
    return seen


def test_fast_mode_blocks_pass_channels_last_3d_from_one_to_the_next():
    seen = _region_layouts(channels_last=True)
    assert {name for name, _, _ in seen} == {"ResnetBlock", "SpatialTransformer", "MotionModule"}
    wrong = {k: n for k, n in seen.items() if k[1:] != ("channels_last_3d", "channels_last_3d")}
    assert not wrong, wrong
    # without the switch, the motion modules hand on their tokens' order
    before = _region_layouts(channels_last=True, keep=False)
    assert any(name == "MotionModule" and out.startswith("strides") for name, _, out in before)


def test_the_switch_changes_the_layout_not_the_values():
    """Off (the default, reference mode), the result keeps the layout the reference's
    `hidden_states + residual` gives, the tokens' order; on, the input's."""
    torch.manual_seed(0)
    unet = random_unet(UNET_PRESETS["tiny"], seed=0).eval()
    module = next(m for m in unet.modules() if isinstance(m, MotionModule))
    channels = module.temporal_transformer.proj_out.out_features
    x = torch.randn(1, channels, 4, 8, 8).contiguous(memory_format=CL)
    with torch.no_grad():
        out = module(x)
        module.temporal_transformer.keep_input_layout = True
        out_cl = module(x)
    assert _layout(out).startswith("strides")  # (B, H, W, F, C) in memory, as the reference's
    assert _layout(out_cl) == "channels_last_3d"
    torch.testing.assert_close(out_cl, out, rtol=0, atol=1e-5 * out.abs().max().item())
