"""Every fast-mode switch that runs on a CPU equals the plain path, within a stated tolerance.

FastOptions switches covered here: batch_vae, vae_micro_batch, channels_last,
motion_attention, overlap, face_workers and x264_preset; and FastPredictor without
graphs or compilation (its CPU path) against the plain DeepCache predictor. compile and
cuda_graphs are CUDA-only: tests/test_accel_cuda.py.

Tolerances are relative to the largest magnitude of the compared output ("rel"): fp32
reductions done in another order (another batch split, memory layout or attention kernel)
agree to about 1e-6 of that; 1e-5 leaves room and still catches any real difference (a
wrong noise draw, a dropped frame or a mis-ordered channel moves outputs by 1e-2 or more).
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cpu_components import cpu_components
from demo_clip import demo_clip
from denoise_fakes import CountingVAE, trivial_predictor
from fastsync.accel.predictor import FastPredictor, PlainPredictor
from fastsync.accel.setup import prepare_fast
from fastsync.components import make_scheduler, random_vae
from fastsync.config import UNET_PRESETS
from fastsync.denoise import ChunkDenoiser, SamplingOptions
from fastsync.engine import EngineOptions, FastOptions
from fastsync.face.mask import mask_for_resolution
from fastsync.models.attention import Attention
from fastsync.models.loading import random_unet
from fastsync.models.motion_module import TemporalSelfAttention

torch.set_num_threads(2)

REL = 1e-5  # fp32, reordered reductions (see the module docstring)
# Two channels per GroupNorm group, as in the full model (the `tiny` preset's 32 channels in
# 32 groups would let a norm erase some errors; see test_deepcache.py).
CONFIG = dataclasses.replace(UNET_PRESETS["tiny"], block_out_channels=(64, 64, 64, 64))
BATCH, FRAMES, SIDE = 2, 4, 16


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float = REL) -> None:
    scale = expected.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(actual, expected, rtol=0, atol=rel * scale)


@pytest.fixture(scope="module")
def unet():
    return random_unet(CONFIG, seed=5)


def _step_inputs(step: int, frames: int = FRAMES):
    g = torch.Generator().manual_seed(300 + step)
    sample = torch.randn(BATCH, 13, frames, SIDE, SIDE, generator=g)
    audio = torch.randn(BATCH * frames, 50, 384, generator=g)
    return sample, torch.tensor(981 - 50 * step), audio


def _run_steps(predictor, steps: int = 5, frames: int = FRAMES) -> list[torch.Tensor]:
    """A chunk's DeepCache loop (interval 3: full steps 0 and 3, cached 1, 2 and 4)."""
    predictor.reset()
    outs = []
    with torch.inference_mode():
        for step in range(steps):
            outs.append(predictor(*_step_inputs(step, frames), step).clone())
    return outs


# ---------------------------------------------------------------------------------------
# FastPredictor's CPU path, channels_last, motion attention backend
# ---------------------------------------------------------------------------------------


def test_fast_predictor_on_cpu_is_the_plain_predictor(unet):
    """No graphs (no CUDA here, whatever is asked) and no compilation: the same calls, so
    bit for bit the same, for full and cached steps and for a short last chunk."""
    plain = PlainPredictor(unet, 3)
    fast = FastPredictor(unet, 3, channels_last=False, cuda_graphs=True, compiled=True, num_frames=FRAMES)
    assert fast.cuda_graphs is False
    for frames in (FRAMES, FRAMES - 1):  # the standard chunk, then a short last one (eager stance)
        for ours, expected in zip(_run_steps(fast, frames=frames), _run_steps(plain, frames=frames)):
            assert torch.equal(ours, expected)
    assert fast.graphs == {}
    # the comparison can fail: a cached step is not the full model
    full = PlainPredictor(unet, 1)
    assert not torch.equal(_run_steps(full)[1], _run_steps(plain)[1])


def test_channels_last_equals_contiguous(unet):
    """prepare_fast's channels_last weights (UNet and VAE) and FastPredictor's channels_last_3d
    input against the plain model: fp32 convolutions in another memory order."""
    fast_unet, vae = copy.deepcopy(unet), random_vae("tiny", seed=2)
    plain_vae = copy.deepcopy(vae)
    c = cpu_components(fast_unet, vae, FastOptions(channels_last=True, compile=False, cuda_graphs=False,
                                                motion_attention="sdpa"))  # sdpa = the default backend
    prepare_fast(c)
    assert c.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)  # the switch took effect
    assert not unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    fast = FastPredictor(c.unet, 3, channels_last=True, cuda_graphs=False, compiled=False, num_frames=FRAMES)
    for ours, expected in zip(_run_steps(fast), _run_steps(PlainPredictor(unet, 3))):
        assert_close_rel(ours, expected)

    pixels = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        latents = c.vae.encode(pixels.contiguous(memory_format=torch.channels_last)).latent_dist.mean
        assert_close_rel(latents, plain_vae.encode(pixels).latent_dist.mean)
        assert_close_rel(c.vae.decode(latents).sample, plain_vae.decode(latents).sample)


@pytest.mark.parametrize("backend", ["sdpa-efficient", "math"])
def test_motion_attention_backend_equals_default(unet, backend):
    """FastOptions.motion_attention sets the kernel of the temporal attentions only; on the
    CPU "sdpa-efficient" runs SDPA's math kernel and "math" our own: same function."""
    switched = copy.deepcopy(unet)
    prepare_fast(cpu_components(switched, random_vae("tiny"), FastOptions(channels_last=False, compile=False,
                                                                       motion_attention=backend)))
    temporal = [m for m in switched.modules() if isinstance(m, TemporalSelfAttention)]
    spatial = [m for m in switched.modules() if isinstance(m, Attention) and not isinstance(m, TemporalSelfAttention)]
    assert temporal and all(m.backend == backend for m in temporal)
    assert spatial and all(m.backend is None for m in spatial)  # spatial layers keep the global one
    sample, t, audio = _step_inputs(0)
    with torch.inference_mode():
        assert_close_rel(switched(sample, t, audio), unet(sample, t, audio))
        # the per-layer choice is really used: a bad name there fails the forward pass
        temporal[0].backend = "no-such-kernel"
        with pytest.raises(ValueError, match="unknown attention backend"):
            switched(sample, t, audio)


# ---------------------------------------------------------------------------------------
# VAE batching: batch_vae and vae_micro_batch in ChunkDenoiser
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chunk():
    g = torch.Generator().manual_seed(21)
    faces = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8, generator=g)  # 5 frames: 3 + 2 padded
    return faces, torch.randn(5, 50, 384, generator=g)


def _denoise(chunk, *, batch_vae: bool, micro: int, seed: int = 1247):
    vae = CountingVAE(random_vae("tiny", seed=3))
    mask = torch.from_numpy(mask_for_resolution(64)).float()
    denoiser = ChunkDenoiser(trivial_predictor, vae, make_scheduler(), mask,
                             SamplingOptions(steps=3, seed=seed, num_frames=5), device=torch.device("cpu"),
                             dtype=torch.float32, batch_vae=batch_vae, vae_micro_batch=micro)
    with torch.inference_mode():
        return denoiser(*chunk), vae


@pytest.mark.parametrize(("batch_vae", "micro"), [(True, 0), (False, 3), (True, 3)])
def test_vae_batching_equals_separate_whole_chunk_calls(chunk, batch_vae, micro):
    plain, plain_vae = _denoise(chunk, batch_vae=False, micro=0)
    assert plain_vae.encode_sizes == [5, 5] and plain_vae.decode_sizes == [5]  # the reference's calls
    ours, vae = _denoise(chunk, batch_vae=batch_vae, micro=micro)
    # the switches took effect: one encode of masked + reference faces, or fixed 3-frame calls
    if micro:
        assert set(vae.encode_sizes) == {3} and vae.decode_sizes == [3, 3]
    else:
        assert vae.encode_sizes == [10]
    # Frames are independent in the 2D VAE and the posterior noise is drawn per input, in
    # order, as separate calls draw it: only fp32 rounding of other batch shapes differs.
    assert_close_rel(ours, plain)
    # and the noise draws matter (another seed moves the output far beyond the tolerance)
    other, _ = _denoise(chunk, batch_vae=batch_vae, micro=micro, seed=7)
    assert (other - plain).abs().max().item() > 1e-2


# ---------------------------------------------------------------------------------------
# Whole jobs: overlap, fast vs reference, face_workers, x264 preset
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory, assets_dir):
    return demo_clip(assets_dir, tmp_path_factory.mktemp("clip"))


def _job_frames(clip, out_dir, monkeypatch, mode: str, **fast) -> list[np.ndarray]:
    """Run one tiny job; return the frames handed to the encoder (before lossy coding:
    libx264 with threads is not bit-reproducible from run to run)."""
    from fastsync.api import LipSync
    from fastsync.media.writer import VideoWriter

    frames: list[np.ndarray] = []
    write = VideoWriter.write
    monkeypatch.setattr(VideoWriter, "write", lambda self, frame: (frames.append(frame.copy()), write(self, frame)))
    options = EngineOptions(random_weights=True, model_size="tiny", device="cpu", mode=mode,
                            fast=FastOptions(**fast))
    engine = LipSync.from_options(options)
    report = engine.run(*clip, out_dir / f"{mode}-{sorted(fast.items())}.mp4", sampling=SamplingOptions(steps=3))
    monkeypatch.undo()
    assert report.frames == len(frames) == 27 and report.frames_without_face == 0
    return frames


@pytest.fixture(scope="module")
def job_frames(clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("jobs")
    with pytest.MonkeyPatch.context() as mp:
        return {
            "overlap": _job_frames(clip, out, mp, "fast", overlap=True),
            "sequential": _job_frames(clip, out, mp, "fast", overlap=False),
            "reference": _job_frames(clip, out, mp, "reference"),
        }


def test_overlap_equals_sequential(job_frames):
    """The threaded pipeline reorders work, not arithmetic: the same frames, bit for bit."""
    for i, (a, b) in enumerate(zip(job_frames["overlap"], job_frames["sequential"], strict=True)):
        assert np.array_equal(a, b), f"frame {i}"


def test_fast_mode_frames_match_reference_mode(job_frames):
    """All CPU switches at once (channels_last, efficient motion attention, batched and
    micro-batched VAE, threads). Their fp32 differences (~1e-6 of the latents) reach the
    uint8 frames only where a pixel sits at a rounding boundary: at most 2 levels anywhere,
    and the mean over the whole clip stays under 1e-3 level (measured: 1 level, 7e-6)."""
    fast = np.stack(job_frames["overlap"]).astype(np.int16)
    reference = np.stack(job_frames["reference"]).astype(np.int16)
    diff = np.abs(fast - reference)
    print(f"fast vs reference mode, pre-encode frames: max abs {diff.max()} levels, mean {diff.mean():.2e}")
    assert diff.max() <= 2
    assert diff.mean() < 1e-3
    # The mouth was regenerated (random weights: noise there), so equal frames are not trivial:
    source = np.stack(job_frames["reference"])
    assert source.std() > 10


def test_face_workers_detect_the_same_landmarks(clip, monkeypatch):
    """FaceTracker with a pool of 4 threads (detection, then the warps) equals one frame at a
    time: the same landmarks, matrices and aligned faces, bit for bit."""
    import fastsync.face.align as align
    from fastsync.face.cache import LandmarkCache
    from fastsync.face.landmarks import make_landmarker
    from fastsync.chunks import FaceTracker
    from fastsync.media.video import iter_frames_25fps

    video = clip[0]
    frames = list(iter_frames_25fps(video, max_frames=12))
    sources = list(range(len(frames)))
    threads: set[int] = set()
    landmarker = make_landmarker("dlib")
    detect = landmarker.detect

    def recording_detect(frame):
        threads.add(threading.get_ident())
        return detect(frame)

    warp_threads: set[int] = set()
    warp = align.warp_face

    def recording_warp(*args):
        warp_threads.add(threading.get_ident())
        return warp(*args)

    monkeypatch.setattr(align, "warp_face", recording_warp)

    components = SimpleNamespace(landmarker=SimpleNamespace(detect=recording_detect),
                                 options=EngineOptions(random_weights=True, model_size="tiny"))
    results = {}
    for name, workers in (("sequential", None), ("threads", ThreadPoolExecutor(4))):
        threads.clear()
        warp_threads.clear()
        cache = LandmarkCache(None, video, "dlib")
        tracker = FaceTracker(components.landmarker, components.options.resolution, workers, cache)
        results[name] = (tracker.process(sources, frames), cache.entries, threads | warp_threads)
        if workers is not None:
            workers.shutdown()
    (seq_out, seq_cache, seq_threads), (par_out, par_cache, par_threads) = results["sequential"], results["threads"]
    assert seq_threads == {threading.get_ident()}
    assert threading.get_ident() not in par_threads  # detection and warps really ran in the pool
    assert all(seq_cache[i] is not None for i in sources)  # a face in every frame
    for i in sources:
        assert np.array_equal(seq_cache[i][0], par_cache[i][0]) and seq_cache[i][1] == par_cache[i][1]
        (face_a, affine_a), (face_b, affine_b) = seq_out[i], par_out[i]
        assert np.array_equal(affine_a, affine_b) and np.array_equal(face_a, face_b)


def test_x264_preset_keeps_quality(job_frames, tmp_path):
    """x264_preset="veryfast" (fast mode) against "medium" (the reference's) at crf 18: the
    encoder's output, not the frames, differs. Measured on these frames: 39.6 dB (medium) and
    38.2 dB (veryfast) against the frames given, the random-weight mouth noise being the hard
    part. Both must stay above 35 dB, and veryfast within 2 dB of medium."""
    from fastsync.media.video import iter_frames_25fps
    from fastsync.media.writer import VideoWriter
    from fastsync.tools.quality import compare_frames

    frames = job_frames["overlap"]
    height, width = frames[0].shape[:2]
    psnr = {}
    for preset in ("medium", "veryfast"):
        path = tmp_path / f"{preset}.mp4"
        with VideoWriter(path, width, height, preset=preset) as writer:
            for frame in frames:
                writer.write(frame)
        psnr[preset] = compare_frames(frames, iter_frames_25fps(path)).psnr_db
    print(f"x264 at crf 18 vs its input frames: {psnr}")
    assert min(psnr.values()) > 35
    assert psnr["veryfast"] > psnr["medium"] - 2.0


def test_cpu_threads_are_set_and_restored():
    import cv2

    from fastsync.accel.setup import set_cpu_threads

    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        set_cpu_threads(1)
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (1, 1)
    finally:
        set_cpu_threads(0)
    assert (torch.get_num_threads(), cv2.getNumThreads()) == before


def test_the_triton_motion_attention_is_cuda_only(unet):
    """"triton-short" is ignored on a CPU, as compilation is: the model keeps its default
    backend there (the kernel's own tests are in tests/test_short_attention.py)."""
    switched = copy.deepcopy(unet)
    prepare_fast(cpu_components(switched, random_vae("tiny"), FastOptions(channels_last=False, compile=False,
                                                                       motion_attention="triton-short")))
    temporal = [m for m in switched.modules() if isinstance(m, TemporalSelfAttention)]
    assert temporal and all(m.backend is None for m in temporal)
