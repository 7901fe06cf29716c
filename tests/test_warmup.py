"""fastsync.accel.warmup on the CPU.

The warm-up chunk takes two denoising steps, not a job's twenty. That is only sound if those
two steps call every path a job's chunk calls: here both run with a tiny model, and the
DeepCache passes and VAE calls each one makes are recorded and compared."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from cpu_components import cpu_components
from fastsync.accel.predictor import make_predictor
from fastsync.accel.warmup import WARM_STEPS, warm_chunk
from fastsync.components import random_vae
from fastsync.config import UNET_PRESETS
from fastsync.denoise import ChunkDenoiser, SamplingOptions
from fastsync.engine import Components, FastOptions
from fastsync.models.loading import random_unet

RES, FRAMES = 64, 4


class RecordingVAE:
    def __init__(self, vae, calls: list):
        self.vae, self.calls = vae, calls

    def encode(self, x):
        self.calls.append(("encode", tuple(x.shape)))
        return self.vae.encode(x)

    def decode(self, z):
        self.calls.append(("decode", tuple(z.shape)))
        return self.vae.decode(z)


def _components(calls: list | None, res: int = RES, **fast) -> Components:
    """Tiny fast-mode components on the CPU; with `calls`, the VAE logs its calls there."""
    fast = FastOptions(**{"compile": False, "cuda_graphs": False, "host_processes": False, **fast})
    vae = random_vae("tiny", seed=3)
    vae = vae if calls is None else RecordingVAE(vae, calls)
    return cpu_components(random_unet(UNET_PRESETS["tiny"], seed=5), vae, fast, res)


def _record_passes(c: Components, sampling: SamplingOptions, calls: list) -> None:
    """Log each DeepCache pass of the job's predictor with the shapes it gets."""
    predictor, _ = make_predictor(c, sampling)
    cache = predictor.cache
    for name in ("full_step", "cached_step"):
        method = getattr(cache, name)

        def logged(sample, *args, _method=method, _name=name, **kwargs):
            calls.append((_name, tuple(sample.shape)))
            return _method(sample, *args, **kwargs)

        setattr(cache, name, logged)


def _job_chunk(c: Components, sampling: SamplingOptions) -> torch.Tensor:
    predict, reset = make_predictor(c, sampling)
    denoiser = ChunkDenoiser(predict, c.vae, c.scheduler, c.mask, sampling, device=c.device, dtype=c.dtype,
                             batch_vae=c.options.fast.batch_vae, vae_micro_batch=c.options.fast.vae_micro_batch,
                             on_chunk_start=reset)
    g = torch.Generator().manual_seed(1)
    res = c.mask.shape[-1]
    faces = torch.randint(0, 256, (FRAMES, 3, res, res), dtype=torch.uint8, generator=g)
    return denoiser(faces, torch.randn(FRAMES, 50, 384, generator=g))


@pytest.mark.parametrize("interval", [3, 1, 25])
def test_the_warm_up_chunk_calls_every_path_of_a_job_chunk(interval):
    sampling = SamplingOptions(steps=20, deepcache_interval=interval, num_frames=FRAMES)
    warm_calls, job_calls = [], []
    c = _components(warm_calls)
    _record_passes(c, sampling, warm_calls)
    with torch.inference_mode():
        warm_chunk(c, sampling)
    assert sum(name.endswith("_step") for name, _ in warm_calls) == WARM_STEPS

    c.vae.calls = job_calls
    _record_passes(c, sampling, job_calls)  # the same predictor: the warm-up's is the job's
    with torch.inference_mode():
        _job_chunk(c, sampling)
    assert sum(name.endswith("_step") for name, _ in job_calls) == 20
    assert set(warm_calls) == set(job_calls)
    expected = {"full_step", "encode", "decode"} | ({"cached_step"} if interval > 1 else set())
    assert {name for name, _ in job_calls} == expected


def test_one_step_would_miss_the_cached_pass(monkeypatch):
    """The comparison above can fail: a one-step warm-up never runs a cached DeepCache pass."""
    import fastsync.accel.warmup as warmup

    sampling = SamplingOptions(steps=20, deepcache_interval=3, num_frames=FRAMES)
    calls = []
    c = _components(calls)
    _record_passes(c, sampling, calls)
    monkeypatch.setattr(warmup, "WARM_STEPS", 1)
    with torch.inference_mode():
        warm_chunk(c, sampling)
    assert "cached_step" not in {name for name, _ in calls}


def test_a_chunk_with_a_job_s_steps():
    """What bench_cold_start times after a warm-up: the chunk with every step of a job's."""
    sampling = SamplingOptions(steps=20, deepcache_interval=3, num_frames=FRAMES)
    calls = []
    c = _components(calls)
    _record_passes(c, sampling, calls)
    with torch.inference_mode():
        warm_chunk(c, sampling, steps=sampling.steps)
    assert sum(name.endswith("_step") for name, _ in calls) == 20


def test_a_warm_up_leaves_a_job_s_steps_alone():
    """The warm-up sets the shared scheduler to two steps; the next job's denoiser sets its own."""
    sampling = SamplingOptions(steps=20, num_frames=FRAMES)
    c = _components([])
    with torch.inference_mode():
        warm_chunk(c, sampling)
        assert len(c.scheduler.timesteps) == WARM_STEPS
        denoiser = ChunkDenoiser(lambda *a: None, c.vae, c.scheduler, c.mask, dataclasses.replace(sampling),
                                 device=c.device, dtype=c.dtype)
    assert len(denoiser.timesteps) == 20


def test_the_audio_warm_up_runs_the_mel_and_the_encoder():
    """warm_up's audio part (on a GPU it runs after the compile warm-up); here on the CPU,
    with the real whisper-tiny architecture and random weights."""
    from fastsync.accel.warmup import _warm_audio
    from fastsync.models.whisper import random_whisper_encoder

    c = SimpleNamespace(whisper=random_whisper_encoder().eval(), device=torch.device("cpu"))
    with torch.inference_mode():
        assert _warm_audio(c, 16) > 0
        with pytest.raises(AssertionError, match=r"made 2\d chunks, not 40"):  # 1 s of audio: about 25 frames
            _warm_audio(c, 40)
