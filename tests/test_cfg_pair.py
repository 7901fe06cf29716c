"""cfg_pair: the UNet's shortcuts for a classifier-free-guidance batch give the plain values.

The denoiser's batch is [zero audio, audio] over two equal halves of latents. With
cfg_pair=True the UNet computes the halves once until the first cross-attention and gives
the zero-audio rows' cross-attention as to_out's bias, without computing it. On the CPU in
fp32 the only differences left are summation order in smaller GEMMs.
"""

import dataclasses

import pytest
import torch

from fastsync.accel.deepcache import DeepCache
from fastsync.config import UNET_PRESETS
from fastsync.models.loading import random_unet

torch.set_num_threads(2)

FRAMES, SIDE = 4, 16
CONFIG = dataclasses.replace(UNET_PRESETS["tiny"], block_out_channels=(64, 64, 64, 64))
TOLERANCE = 1e-5  # relative to the output's largest magnitude, fp32


@pytest.fixture(scope="module")
def unet():
    model = random_unet(CONFIG, seed=5)
    # Biases that matter: the shortcut's value for the zero-audio rows is exactly to_out's bias.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("attn2.to_out.0.bias"):
                p.normal_(0, 0.5)
    return model


def _pair(step: int):
    """A CFG batch as the denoiser builds it: equal latent halves, [zeros, audio]."""
    g = torch.Generator().manual_seed(40 + step)
    half = torch.randn(1, 13, FRAMES, SIDE, SIDE, generator=g)
    audio = torch.randn(FRAMES, 50, 384, generator=g)
    return torch.cat([half, half]), torch.tensor(901 - 40 * step), torch.cat([torch.zeros_like(audio), audio])


def _close(a, b):
    return (a - b).abs().max().item() <= TOLERANCE * b.abs().max().item()


@torch.no_grad()
def test_forward_equals_plain(unet):
    sample, t, audio = _pair(0)
    plain = unet(sample, t, audio)
    fast = unet(sample, t, audio, cfg_pair=True)
    assert fast.shape == plain.shape
    assert _close(fast, plain), (fast - plain).abs().max()


@torch.no_grad()
def test_deepcache_steps_equal_plain(unet):
    plain, fast = DeepCache(unet, 3), DeepCache(unet, 3, cfg_pair=True)
    for step in range(5):  # full, cached, cached, full, cached
        sample, t, audio = _pair(step)
        assert _close(fast(sample, t, audio, step), plain(sample, t, audio, step)), step


@torch.no_grad()
def test_shortcuts_are_used(unet):
    """The promise is what the shortcut relies on: with unequal halves and non-zero
    'unconditional' audio the results part, so the fast path is not the plain one in disguise."""
    sample, t, audio = _pair(0)
    sample[0] += 0.5
    audio[:FRAMES] = 1.0
    assert not _close(unet(sample, t, audio, cfg_pair=True), unet(sample, t, audio))


def test_odd_batch_is_refused(unet):
    sample, t, audio = _pair(0)
    with pytest.raises(ValueError, match="even batch"):
        unet(sample[:1], t, audio[:FRAMES], cfg_pair=True)


@pytest.mark.requires_cuda
@torch.no_grad()
def test_fast_predictor_on_cuda_equals_plain_pair(unet):
    """fp16, channels_last, compiled regions and CUDA graphs, as a job runs them: the full
    and the cached step with cfg_pair, against the fp32 plain model on the CPU, must be as
    near it as the same fp16 predictor without cfg_pair is (fp16 rounding, summed in other
    orders)."""
    import copy

    from fastsync.accel.compile import compile_regions
    from fastsync.accel.predictor import FastPredictor

    model = copy.deepcopy(unet).to("cuda", torch.float16).to(memory_format=torch.channels_last)
    compile_regions(model)
    on, off = (FastPredictor(model, 3, channels_last=True, cuda_graphs=True, compiled=True, num_frames=FRAMES,
                             cfg_pair=flag) for flag in (True, False))
    truth = DeepCache(unet, 3)
    for step in range(3):
        sample, t, audio = _pair(step)
        exact = truth(sample, t, audio, step)
        sample, audio = sample.to("cuda", torch.float16), audio.to("cuda", torch.float16)
        a, b = (p(sample, t.to("cuda"), audio, step).float().cpu() for p in (on, off))
        err_on, err_off = (a - exact).abs().max().item(), (b - exact).abs().max().item()
        scale = exact.abs().max().item()
        assert err_on <= 2 * err_off + 1e-3 * scale, (step, err_on, err_off, scale)
