"""DeepCache: interval 1 is the plain model; interval 3 follows the reference's caching semantics.

The independent check emulates DeepCache 0.1.1 (`DeepCacheSDHelper`, cache_branch_id=0) on
the *plain* model with forward hooks, wrapping the same modules it wraps: on a full step
every wrapped module records its output; on a cached step the down blocks, the mid block,
every up block but the last, and the first ResNets/transformers of the last up block return
their recorded output. conv_in, the time embedding, the motion modules and the last layer
of the last up block run normally. Our wrapper takes a different route (it caches one
tensor and never runs the deep stages), so agreement tests the semantics, not the code.
"""

import dataclasses

import pytest
import torch

from fastsync.accel.deepcache import DeepCache
from fastsync.config import UNET_PRESETS
from fastsync.models.loading import random_unet

torch.set_num_threads(2)

BATCH, FRAMES, SIDE = 2, 4, 16
# Not the `tiny` preset itself: with 32 channels in 32 groups at the first level, every
# GroupNorm group is one channel and the ResNet's per-channel time-embedding shift is
# removed exactly by the next norm, so a stale timestep on cached steps would go unseen.
# 64 channels give two channels per group, as the full model has ten.
CONFIG = dataclasses.replace(UNET_PRESETS["tiny"], block_out_channels=(64, 64, 64, 64))


@pytest.fixture(scope="module")
def unet():
    return random_unet(CONFIG, seed=11)


def _step_inputs(step, same_audio=None):
    """Different latents, timestep (and audio unless fixed) on every step."""
    g = torch.Generator().manual_seed(100 + step)
    sample = torch.randn(BATCH, 13, FRAMES, SIDE, SIDE, generator=g)
    audio = torch.randn(BATCH * FRAMES, 50, 384, generator=g) if same_audio is None else same_audio
    return sample, torch.tensor(981 - 50 * step), audio


class ReferenceDeepCacheEmulator:
    """Forward hooks on the plain model reproducing the reference helper's cache/replay."""

    def __init__(self, unet, interval):
        self.interval = interval
        self.cache = {}
        self.active = False  # hooks do nothing outside __call__
        self.replay = False
        last = unet.up_blocks[-1]
        n = len(last.resnets)
        wrapped = list(unet.down_blocks) + [unet.mid_block] + list(unet.up_blocks[:-1])
        wrapped += [last.resnets[i] for i in range(n - 1)] + [last.attentions[i] for i in range(n - 1)]
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(wrapped)]
        self.unet = unet

    def _hook(self, key):
        def hook(module, args, output):
            if not self.active:
                return None
            if self.replay:
                return self.cache[key]
            self.cache[key] = output
            return None

        return hook

    def __call__(self, sample, t, audio, step):
        self.replay = step % self.interval != 0
        self.active = True
        try:
            with torch.inference_mode():
                return self.unet(sample, t, audio)
        finally:
            self.active = False

    def close(self):
        for h in self.handles:
            h.remove()


def test_interval_one_is_the_plain_model(unet):
    cache = DeepCache(unet, interval=1)
    for step in range(3):
        sample, t, audio = _step_inputs(step)
        with torch.inference_mode():
            assert torch.equal(cache(sample, t, audio, step), unet(sample, t, audio))


def test_interval_three_matches_reference_semantics(unet):
    audio = _step_inputs(0)[2]  # the pipeline keeps one chunk's audio over its steps
    cache = DeepCache(unet, interval=3)
    emulator = ReferenceDeepCacheEmulator(unet, interval=3)
    try:
        for step in range(5):  # full steps 0 and 3, cached steps 1, 2, 4
            sample, t, _ = _step_inputs(step, same_audio=audio)
            with torch.inference_mode():
                ours = cache(sample, t, audio, step)
                plain = unet(sample, t, audio)  # emulator hooks inactive here
            expected = emulator(sample, t, audio, step)
            # Same kernels on the same tensors: equal up to fp32 reduction order (1e-6 relative).
            scale = expected.abs().max().item()
            torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6 * scale)
            if step % 3 == 0:
                assert torch.equal(ours, plain), f"full step {step} must be the plain model"
            else:
                # a cached step is an approximation: it must actually differ from the full model
                assert (ours - plain).abs().max().item() > 1e-3 * scale, f"step {step} looks uncached"
    finally:
        emulator.close()


def test_cached_step_uses_fresh_stem_timestep_and_audio(unet):
    """Hand substitution: full model on new inputs with the deep feature swapped for the cached one."""
    cache = DeepCache(unet, interval=3)
    last = unet.up_blocks[-1]
    deep_source = last.motion_modules[len(last.resnets) - 2]  # output = input of the last layer
    captured = {}
    handle = deep_source.register_forward_hook(lambda m, a, out: captured.setdefault("deep", out))
    try:
        with torch.inference_mode():
            cache(*_step_inputs(0), 0)
    finally:
        handle.remove()
    assert torch.equal(captured["deep"], cache.deep)

    sample, t, audio = _step_inputs(1)  # new latents, new timestep, new audio
    handle = deep_source.register_forward_hook(lambda m, a, out: captured["deep"])
    try:
        with torch.inference_mode():
            expected = unet(sample, t, audio)
    finally:
        handle.remove()
    with torch.inference_mode():
        ours = cache(sample, t, audio, 1)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6 * expected.abs().max().item())


def test_order_is_enforced(unet):
    cache = DeepCache(unet, interval=3)
    sample, t, audio = _step_inputs(0)
    with pytest.raises(RuntimeError, match="no full step ran since reset"):
        cache(sample, t, audio, 1)
    with torch.inference_mode():
        cache(sample, t, audio, 0)
    assert cache.deep is not None
    with pytest.raises(RuntimeError, match="does not match the cached feature"):
        cache(sample[:1], t, audio[:FRAMES], 2)
    cache.reset()
    assert cache.deep is None
    assert [cache.is_full_step(i) for i in range(7)] == [True, False, False, True, False, False, True]
    with pytest.raises(ValueError):
        DeepCache(unet, interval=0)
