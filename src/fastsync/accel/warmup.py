"""One-time costs before the first job: compilation and CUDA-graph capture.

In fast mode on a GPU, one chunk of synthetic faces and audio goes through the whole
denoiser, so that compiled regions are built and the graphs for the standard chunk
shape are captured before any real work; the profiler reports this apart from the
steady state. The chunk takes two denoising steps, not the job's twenty: a full DeepCache
step and a cached one call every kernel a job calls (the steps differ only in their
timestep's value), so the other eighteen would only repeat replays.

Where regions still have to be compiled, a first pass runs them eagerly while listing them,
worker processes compile them side by side (fastsync.accel.parallel_compile), and the
chunk then runs compiled and captures its graphs. The warm-up has its own generator: a job's noise is unaffected. One second of
silence then goes through the audio features, whose first call is slow too.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from fastsync.denoise import ChunkDenoiser, SamplingOptions
from fastsync.engine import Components


WARM_STEPS = 2  # step 0 is a full DeepCache step, step 1 a cached one (interval >= 2)


def warm_up(c: Components, sampling: SamplingOptions) -> dict[str, float]:
    if c.options.mode != "fast" or c.device.type != "cuda":
        return {}
    started = time.perf_counter()
    spent = _compile_side_by_side(c, sampling)
    chunk_started = time.perf_counter()
    warm_chunk(c, sampling)
    torch.cuda.synchronize()
    # the compiled chunk with its graph capture: about 1 s on an H200, in a first process as
    # in a second, now that no kernel times its launch configs (compile.kernel_tuning)
    spent["warmup_chunk_s"] = round(time.perf_counter() - chunk_started, 3)
    spent["warmup_compile_capture_s"] = round(time.perf_counter() - started, 3)
    spent["warmup_audio_s"] = _warm_audio(c, sampling.num_frames)
    store = c.cache.get("region_compiler")
    if store is not None:  # of which compiling regions, and loading them from disk
        spent |= {"regions_compile_s": round(store.stats.compile_s, 3), "regions_load_s": round(store.stats.load_s, 3),
                  "regions_received_load_s": round(store.stats.receive_s, 3)}
    return spent


def _compile_side_by_side(c: Components, sampling: SamplingOptions) -> dict[str, float]:
    from fastsync.accel.parallel_compile import SideBySide, stop_workers, worker_count

    store = c.cache.get("region_compiler")
    started = c.cache.pop("compile_workers", None)  # started before the weights loaded
    workers = worker_count(c.options.fast.compile_workers)
    if store is None or workers < 2:
        stop_workers(started or [])
        return {}
    with SideBySide(store, workers, started) as side, store.deferring(side):
        warm_chunk(c, sampling, graphs=False)  # regions that would compile run eagerly, listed
    if not side.stats.submitted:  # every region came from disk
        return {}
    stats = side.stats
    return {"regions_parallel_s": round(stats.wall_s, 3), "regions_parallel_workers": stats.workers,
            "regions_parallel_submitted": stats.submitted, "regions_parallel_compiled": stats.compiled,
            **{f"regions_parallel_{name}": value for name, value in stats.timeline().items()}}


def warm_chunk(c: Components, sampling: SamplingOptions, *, graphs: bool = True, steps: int | None = None) -> None:
    """One synthetic chunk of the job's shape through the job's predictor, in `steps` steps
    at most (WARM_STEPS unless told). graphs=False: through a predictor like it that
    captures no CUDA graphs."""
    from fastsync.accel.predictor import graphless_predictor, make_predictor

    # the job's own predictor, so that its graphs are kept
    predict, reset = make_predictor(c, sampling) if graphs else graphless_predictor(c, sampling)
    short = dataclasses.replace(sampling, steps=min(sampling.steps, steps or WARM_STEPS))
    denoiser = ChunkDenoiser(predict, c.vae, c.scheduler, c.mask, short, device=c.device, dtype=c.dtype,
                             batch_vae=c.options.fast.batch_vae,
                             vae_micro_batch=c.options.fast.vae_micro_batch, on_chunk_start=reset)
    res, frames = c.mask.shape[-1], sampling.num_frames
    generator = torch.Generator().manual_seed(0)
    faces = torch.randint(0, 256, (frames, 3, res, res), dtype=torch.uint8, generator=generator)
    audio = torch.randn(frames, 50, 384, generator=generator)
    denoiser(faces, audio)


def _warm_audio(c: Components, frames: int) -> float:
    """One second of silence through the mel and the whisper encoder: their first call in a
    process sets up cuFFT and loads kernels (the audio stage took 0.40-0.45 s in the first job
    after a warm-up without this, 0.02 s in later ones; bench/results/e2e_h200_first_job_*)."""
    import numpy as np

    from fastsync.audio.features import LazyAudioFeatures
    from fastsync.audio.mel import SAMPLE_RATE

    started = time.perf_counter()
    with torch.inference_mode():
        silence = np.zeros(SAMPLE_RATE, np.float32)
        chunks = LazyAudioFeatures.from_samples(silence, c.whisper, c.device).chunks(0, frames)
    if chunks.shape[0] != frames:
        raise AssertionError(f"the audio warm-up made {chunks.shape[0]} chunks, not {frames}")
    if c.device.type == "cuda":
        torch.cuda.synchronize()
    return round(time.perf_counter() - started, 3)
