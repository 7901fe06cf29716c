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

import pytest
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


def _tiny_unet(channels_last: bool, keep: bool = True):
    """The tiny UNet laid out as fast set-up lays it out on a GPU (or not), and its inputs."""
    unet = random_unet(UNET_PRESETS["tiny"], seed=0).eval()
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    if keep:
        assert keep_channels_last_between_blocks(unet) > 0
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 13, 4, 32, 32, generator=g)
    if channels_last:
        sample = sample.contiguous(memory_format=CL)
    return unet, (sample, torch.tensor(500), torch.randn(8, 50, 384, generator=g))


def _region_layouts(channels_last: bool, keep: bool = True) -> collections.Counter:
    unet, inputs = _tiny_unet(channels_last, keep)
    seen: collections.Counter = collections.Counter()
    for module in unet.modules():
        if isinstance(module, REGIONS):
            module.register_forward_hook(
                lambda m, args, out: seen.update([(type(m).__name__, _layout(args[0]), _layout(out))]))
    with torch.no_grad():
        DeepCache(unet, 3)(*inputs, 0)
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


def _video(channels, frames=3, height=5, width=6, seed=0, layout=CL):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, frames, height, width, generator=g)
    return x.contiguous(memory_format=layout)


def test_cat_channels_is_torch_cat_with_the_inputs_layout():
    from fastsync.models.resnet import cat_channels

    for layout in (CL, torch.contiguous_format):
        x, skip = _video(4, layout=layout), _video(3, seed=1, layout=layout)
        out = cat_channels(x, skip)
        assert torch.equal(out, torch.cat([x, skip], dim=1))
        assert _layout(out) == ("channels_last_3d" if layout is CL else "contiguous")
    # mixed layouts take the plain cat
    mixed = cat_channels(_video(4), _video(3, layout=torch.contiguous_format))
    assert torch.equal(mixed, torch.cat([_video(4), _video(3, layout=torch.contiguous_format)], dim=1))


def test_upsample_nearest_picks_the_pixels_of_the_reference_5d_call():
    import torch.nn.functional as F

    from fastsync.models.resnet import upsample_nearest

    for layout in (CL, torch.contiguous_format):
        x = _video(4, layout=layout)
        for size in ((10, 12), (9, 11), (5, 6)):  # 2x, an odd side rounded up, unchanged
            expected = F.interpolate(x.contiguous(), size=(x.shape[2], *size), mode="nearest")
            out = upsample_nearest(x, size)
            assert torch.equal(out, expected), (layout, size)
            if layout is CL:
                assert _layout(out) == "channels_last_3d"


def test_fast_layout_forward_runs_no_5d_cat_or_3d_upsampling():
    """CUDA's batched cat takes at most 4 dims and its 3D nearest upsampling has no
    channels_last kernel, so in fast mode's layout the UNet should call neither."""
    from torch.utils._python_dispatch import TorchDispatchMode

    calls: collections.Counter = collections.Counter()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name == "cat" and args[0][0].dim() == 5:
                calls["5d cat"] += 1
            elif name == "cat":
                calls["4d cat"] += 1
            elif name.startswith("upsample_nearest"):
                calls[name] += 1
            return func(*args, **(kwargs or {}))

    unet, inputs = _tiny_unet(channels_last=True)
    with torch.no_grad(), Record():
        unet(*inputs)
    assert calls["4d cat"] > 0 and calls["upsample_nearest2d"] > 0, calls
    assert calls["5d cat"] == 0 and calls["upsample_nearest3d"] == 0, calls


@pytest.mark.requires_cuda
def test_cat_and_upsampling_equal_the_5d_calls_on_cuda_bit_for_bit():
    import torch.nn.functional as F

    from fastsync.models.resnet import cat_channels, upsample_nearest

    x = _video(320, frames=16, height=32, width=32).half().cuda().contiguous(memory_format=CL)
    skip = _video(640, frames=16, height=32, width=32, seed=1).half().cuda().contiguous(memory_format=CL)
    out = cat_channels(x, skip)
    assert torch.equal(out, torch.cat([x, skip], dim=1)) and _layout(out) == "channels_last_3d"
    for size in ((64, 64), (63, 65)):
        up = upsample_nearest(x, size)
        assert torch.equal(up, F.interpolate(x, size=(16, *size), mode="nearest")), size
        assert _layout(up) == "channels_last_3d"
