"""Choose how the UNet is called for each denoising step.

The plain path calls the model. DeepCache (the reference's speed-up) reuses deep
features between full steps. Fast mode adds, from outside the model: channels_last,
regional compilation and CUDA graphs — each behind its own switch in FastOptions.
"""

from __future__ import annotations

from typing import Callable

from fastsync.denoise import NoisePredictor, SamplingOptions
from fastsync.engine import Components


def make_predictor(c: Components, sampling: SamplingOptions) -> tuple[NoisePredictor, Callable[[], None] | None]:
    """Return (predict, on_chunk_start). on_chunk_start resets per-chunk state (DeepCache's cache)."""
    unet = c.unet
    if sampling.deepcache_interval > 1:
        from fastsync.accel.deepcache import DeepCache

        cache = DeepCache(unet, interval=sampling.deepcache_interval)
        return cache, cache.reset

    def plain(sample, t, audio, step):
        return unet(sample, t, audio)

    return plain, None
