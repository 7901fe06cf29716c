"""The CUDA-only fast paths against the plain path: CUDA graphs of the DeepCache steps
(FastPredictor), GraphedCall itself, regional torch.compile of the UNet and the VAE, and
fast mode's whole chunk denoiser against reference mode's. All passed on an H200 (torch 2.11).

Everything runs in fp16, as fast mode does on a GPU, on small shapes. The tolerance is
fp16's own error on this model, measured in each test: the plain path run in fp32 is the
truth, and `floor` = ||plain16 - plain32|| / ||plain32|| (1.7e-3 for the UNet, up to 5e-3
for the VAE decoder on an H200: every layer rounds its activations to fp16, unit roundoff
4.9e-4). A fast path that is as
accurate as the plain one is within `floor` of the truth too, so by the triangle
inequality within 2 * floor of the plain fp16 output; we allow 2.5 * floor (the fast
path's own error up to 1.5x the plain one's). Reordered reductions explain such
differences: cuDNN picks other convolution algorithms for channels_last or inside a
capture; inductor fuses GroupNorm/SiLU chains and keeps fp32 where eager rounds to fp16.
The worst single element must also stay within 1e-2 of the largest magnitude (measured:
2e-3 to 4.5e-3). A real fault (a stale timestep or deep feature, a skipped layer, a frame out
of order) moves the whole tensor by 1e-2 or more: the graph test checks that its bound
rejects a stale timestep.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from fastsync.accel.graphs import GraphedCall
from fastsync.accel.predictor import FastPredictor, PlainPredictor
from fastsync.components import make_scheduler, random_vae
from fastsync.config import UNET_PRESETS
from fastsync.models.loading import random_unet

pytestmark = pytest.mark.requires_cuda

SLACK = 2.5  # fast vs plain fp16, in units of the plain path's fp16 error (module docstring)
FLOOR_CAP = 1e-2  # the plain fp16 path must be this close to fp32 (measured 1.7e-3 to 5e-3), or the bound means little
PEAK = 1e-2  # worst element vs the largest magnitude
CONFIG = dataclasses.replace(UNET_PRESETS["tiny"], block_out_channels=(64, 64, 64, 64))
BATCH, FRAMES, SIDE = 2, 16, 16  # the CFG pair, a standard 16-frame chunk, 128 px faces
STEPS, INTERVAL = 20, 3


def norm_rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.float(), expected.float()
    return ((actual - expected).norm() / expected.norm()).item()


def assert_fp16_close(fast: torch.Tensor, plain: torch.Tensor, plain32: torch.Tensor) -> None:
    """fast and plain: the two fp16 paths; plain32: the plain path in fp32 (the truth)."""
    assert torch.isfinite(fast).all() and torch.isfinite(plain).all()
    floor = norm_rel(plain, plain32)
    error = norm_rel(fast, plain)
    peak = ((fast.float() - plain.float()).abs().max() / plain.float().abs().max()).item()
    print(f"  fast vs plain {error:.1e} (fp16 floor {floor:.1e}), worst element {peak:.1e} of the peak")
    assert 0 < floor < FLOOR_CAP
    assert error <= SLACK * floor, f"fast vs plain {error:.2e} > {SLACK} x fp16's own error {floor:.2e}"
    assert peak <= PEAK, f"worst element {peak:.2e} of the largest magnitude > {PEAK}"


@pytest.fixture(scope="module")
def unet():
    return random_unet(CONFIG, seed=5, device="cuda", dtype=torch.float16).eval()


@pytest.fixture(scope="module")
def timesteps():
    scheduler = make_scheduler()
    scheduler.set_timesteps(STEPS, device="cuda")
    return scheduler.timesteps  # (20,) int64 on the GPU, as ChunkDenoiser passes them


def _inputs(step: int, frames: int = FRAMES, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(1000 * seed + step)
    sample = torch.randn(BATCH, 13, frames, SIDE, SIDE, generator=g, device="cuda", dtype=torch.float16)
    audio = torch.randn(BATCH * frames, 50, 384, generator=g, device="cuda", dtype=torch.float16)
    return sample, audio


def _chunk(predictor, timesteps, frames: int = FRAMES, seed: int = 0,
           dtype: torch.dtype = torch.float16) -> list[torch.Tensor]:
    """One chunk's 20-step loop: DeepCache full steps 0, 3, ..., 18, cached steps between.
    With dtype=float32 the same (fp16-drawn) inputs go to an fp32 model: the truth."""
    predictor.reset()
    outs = []
    with torch.no_grad():  # as ChunkDenoiser runs it
        for step, t in enumerate(timesteps):
            sample, audio = (x.to(dtype) for x in _inputs(step, frames, seed))
            outs.append(predictor(sample, t, audio, step).clone())  # graph outputs are reused buffers
    return outs


@pytest.fixture(scope="module")
def unet32(unet):
    return copy.deepcopy(unet).float()


# ---------------------------------------------------------------------------------------
# GraphedCall
# ---------------------------------------------------------------------------------------


def _affine_relu(x, w):
    return torch.relu(x @ w) + 1.0


def test_graphed_call_replays_the_eager_function():
    g = torch.Generator(device="cuda").manual_seed(0)
    x, w = (torch.randn(64, 64, device="cuda", generator=g) for _ in range(2))
    graphed = GraphedCall(_affine_relu, (x, w))
    assert graphed.inputs[0].data_ptr() != x.data_ptr()  # recorded on its own copies
    x.add_(100.0)  # so the caller's tensors stay the caller's
    for _ in range(3):
        x2, w2 = (torch.randn(64, 64, device="cuda", generator=g) for _ in range(2))
        out = graphed(x2, w2)
        assert out.data_ptr() == graphed.outputs.data_ptr()  # a static output buffer
        # the same kernels on the same numbers (fp32, no TF32 by default)
        torch.testing.assert_close(out, _affine_relu(x2, w2), rtol=1e-5, atol=1e-5)
    assert graphed.matches([x2, w2]) and not graphed.matches([x2[:32], w2])
    assert not graphed.matches([x2.half(), w2])


def test_graphed_call_shares_another_graphs_output():
    """An input listed in `shared` is the other graph's output buffer itself: chaining two
    graphs copies nothing, and each replay of the second sees the first's latest output."""
    g = torch.Generator(device="cuda").manual_seed(1)
    x, w, b = (torch.randn(32, 32, device="cuda", generator=g) for _ in range(3))
    first = GraphedCall(_affine_relu, (x, w))
    second = GraphedCall(lambda y, bias: y * 2.0 - bias, (first.outputs, b), shared=(0,))
    assert second.inputs[0] is first.outputs
    assert second.inputs[1].data_ptr() != b.data_ptr()
    for _ in range(3):
        x2 = torch.randn(32, 32, device="cuda", generator=g)
        y = first(x2, w)
        out = second(y, b)  # y *is* the shared buffer: not copied
        torch.testing.assert_close(out, _affine_relu(x2, w) * 2.0 - b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# CUDA graphs of the DeepCache steps
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_graphs_equal_the_plain_predictor(unet, unet32, timesteps, monkeypatch, channels_last):
    replays = []
    call = GraphedCall.__call__
    monkeypatch.setattr(GraphedCall, "__call__", lambda self, *a: (replays.append(self), call(self, *a))[1])

    model = copy.deepcopy(unet)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fast = FastPredictor(model, INTERVAL, channels_last=channels_last, cuda_graphs=True, compiled=False,
                         num_frames=FRAMES)
    plain, plain32 = PlainPredictor(unet, INTERVAL), PlainPredictor(unet32, INTERVAL)
    floors = []
    for seed in (0, 1):  # two chunks: the graphs are captured once and replayed in the second
        truth = _chunk(plain32, timesteps, seed=seed, dtype=torch.float32)
        for ours, expected, exact in zip(_chunk(fast, timesteps, seed=seed), _chunk(plain, timesteps, seed=seed),
                                         truth, strict=True):
            if not channels_last:  # graphs alone replay the eager kernels: bit for bit
                assert torch.equal(ours, expected)
            assert_fp16_close(ours, expected, exact)
            floors.append(norm_rel(expected, exact))
    assert len(fast.graphs) == 1
    [(full, shallow)] = fast.graphs.values()
    assert shallow is not None and shallow.inputs[3] is full.outputs[1]  # deep feature shared, not copied
    # every call replayed a graph: 7 full steps (0, 3, ..., 18) and 13 cached ones per chunk
    assert len(replays) == 2 * STEPS
    assert sum(r is full for r in replays) == 2 * 7 and sum(r is shallow for r in replays) == 2 * 13
    # The bound tells a fault apart: a graph that kept a stale timestep (the previous step's)
    # would be off by more than any error the loop above allowed.
    sample, audio = _inputs(5)
    with torch.no_grad():
        plain.reset()
        plain(sample, timesteps[3], audio, 3)  # fill the cache, then a cached step twice:
        right = plain(sample, timesteps[5], audio, 5)
        stale = plain(sample, timesteps[4], audio, 5)
    print(f"  a stale timestep: {norm_rel(stale, right):.1e}")
    assert norm_rel(stale, right) > SLACK * max(floors)


def test_short_last_chunk_runs_eagerly(unet, timesteps):
    """A chunk shorter than 16 frames is not captured (no new graph for a one-off shape)."""
    fast = FastPredictor(unet, INTERVAL, channels_last=False, cuda_graphs=True, compiled=False,
                         num_frames=FRAMES)
    plain = PlainPredictor(unet, INTERVAL)
    for ours, expected in zip(_chunk(fast, timesteps[:4], frames=5), _chunk(plain, timesteps[:4], frames=5)):
        assert torch.equal(ours, expected)  # the same eager calls
    assert fast.graphs == {}


# ---------------------------------------------------------------------------------------
# Regional torch.compile
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("column_group_norm,split_linear_bias,glue",
                         [(False, False, False), (True, False, False), (True, True, False), (True, True, True)])
def test_compile_regions_matches_eager(unet, unet32, timesteps, column_group_norm, split_linear_bias, glue):
    from fastsync.accel import group_norm, linear_bias
    from fastsync.accel.compile import REGIONS, compile_glue, compile_regions
    from fastsync.accel.glue import glue_modules

    compiled = copy.deepcopy(unet)
    if column_group_norm:  # fast set-up's norms (FastOptions.column_group_norm)
        assert group_norm.use_in_regions(compiled, REGIONS) > 0
        if glue:  # the head's norm too
            assert sum(group_norm.use_in(m) for m in glue_modules(compiled)) == 1
    if split_linear_bias:  # FastOptions.split_linear_bias: one more fp16 rounding per product
        assert linear_bias.use_in_regions(compiled, REGIONS) > 0
    count = compile_regions(compiled)
    assert count == sum(isinstance(m, REGIONS) for m in unet.modules()) > 0
    if glue:  # FastOptions.compile_glue: the upsamplers and the head compiled as well
        assert compile_glue(compiled) == len(glue_modules(compiled)) > 1
    plain = PlainPredictor(unet, INTERVAL)
    fast = PlainPredictor(compiled, INTERVAL)  # DeepCache on the compiled regions, no graphs
    few = timesteps[:4]  # full, cached, cached, full: both DeepCache paths, compiled once each
    truth = _chunk(PlainPredictor(unet32, INTERVAL), few, frames=4, dtype=torch.float32)
    for ours, expected, exact in zip(_chunk(fast, few, frames=4), _chunk(plain, few, frames=4), truth,
                                     strict=True):
        assert_fp16_close(ours, expected, exact)


def test_precompiled_regions_match_eager_and_load_from_disk(unet, unet32, timesteps, tmp_path):
    """Regions kept on disk whole: compiled once, then read back by a fresh compiler with
    nothing traced again, and within the same fp16 bound as lazy compilation."""
    from fastsync.accel import precompile
    from fastsync.accel.compile import compile_regions

    if not precompile.supported():
        pytest.skip("this torch cannot compile ahead of time")
    few = timesteps[:4]
    plain = _chunk(PlainPredictor(unet, INTERVAL), few, frames=4)
    truth = _chunk(PlainPredictor(unet32, INTERVAL), few, frames=4, dtype=torch.float32)
    for round_ in ("compile", "load"):
        store = precompile.RegionCompiler(tmp_path)
        compiled = copy.deepcopy(unet)
        compile_regions(compiled, store=store)
        ours = _chunk(PlainPredictor(compiled, INTERVAL), few, frames=4)
        for a, b, exact in zip(ours, plain, truth, strict=True):
            assert_fp16_close(a, b, exact)
        if round_ == "compile":
            assert store.stats.compiled > 0 and store.stats.loaded == 0
        else:
            assert store.stats.compiled == 0 and store.stats.loaded > 0


@pytest.mark.parametrize("column_group_norm", [False, True])
def test_compile_vae_regions_matches_eager(column_group_norm):
    from fastsync.accel import group_norm
    from fastsync.accel.compile import compile_vae_regions, vae_regions

    vae = random_vae("tiny", seed=3).to("cuda", torch.float16).to(memory_format=torch.channels_last)
    compiled = copy.deepcopy(vae)
    if column_group_norm:
        assert group_norm.use_in_regions(compiled, vae_regions()) > 0
    assert compile_vae_regions(compiled) == 2  # the encoder and the decoder
    g = torch.Generator(device="cuda").manual_seed(2)
    pixels = torch.rand(4, 3, 64, 64, device="cuda", generator=g, dtype=torch.float16) * 2 - 1
    vae32 = copy.deepcopy(vae).float()
    with torch.inference_mode():
        mean = vae.encode(pixels).latent_dist.mean
        mean32 = vae32.encode(pixels.float()).latent_dist.mean
        assert_fp16_close(compiled.encode(pixels).latent_dist.mean, mean, mean32)
        assert_fp16_close(compiled.decode(mean).sample, vae.decode(mean).sample, vae32.decode(mean.float()).sample)


# ---------------------------------------------------------------------------------------
# A whole chunk: fast mode's denoiser against reference mode's
# ---------------------------------------------------------------------------------------


def _job_denoiser(unet, vae, mode: str, fast_options):
    from fastsync.denoise import SamplingOptions
    from fastsync.engine import Components, EngineOptions
    from fastsync.face.mask import mask_for_resolution
    from fastsync.pipeline import Job

    options = EngineOptions(random_weights=True, model_size="tiny", device="cuda", mode=mode, fast=fast_options)
    mask = torch.from_numpy(mask_for_resolution(SIDE * 8)).float()
    c = Components(unet, vae, None, make_scheduler(), None, mask, torch.device("cuda"), torch.float16, options)
    if mode == "fast":
        from fastsync.accel.setup import prepare_fast

        prepare_fast(c)
    return Job(c, SamplingOptions(steps=STEPS))._denoiser()


def test_fast_chunk_denoiser_matches_reference_mode(unet):
    """Every fast switch but compile (tested above, and minutes to build here): CUDA graphs,
    channels_last, the efficient temporal-attention kernel, one batched VAE encode in
    4-frame micro-batches; against reference mode's separate whole-chunk calls, 20 DDIM
    steps, on the same weights and noise. Differences are fp16 kernel rounding carried
    through 20 steps and the VAE decoder: the decoded faces ([-1, 1]) must agree within
    0.02 (2.5 levels of 8-bit), on average within 0.002 (measured on an H200: 8.3e-3 and
    3.1e-4)."""
    from fastsync.engine import FastOptions

    vae = random_vae("tiny", seed=3).to("cuda", torch.float16)
    fast_options = FastOptions(compile=False, cuda_graphs=True, channels_last=True, batch_vae=True,
                               vae_micro_batch=4, motion_attention="sdpa-efficient")
    reference = _job_denoiser(unet, vae, "reference", fast_options)
    fast = _job_denoiser(copy.deepcopy(unet), copy.deepcopy(vae), "fast", fast_options)
    g = torch.Generator().manual_seed(4)
    faces = torch.randint(0, 256, (FRAMES, 3, SIDE * 8, SIDE * 8), dtype=torch.uint8, generator=g)
    audio = torch.randn(FRAMES, 50, 384, generator=g)
    for _ in range(2):  # the second chunk replays the graphs captured in the first
        expected, ours = reference(faces, audio).float(), fast(faces, audio).float()
        diff = (ours - expected).abs()
        print(f"fast vs reference chunk: max {diff.max().item():.2e}, mean {diff.mean().item():.2e}")
        assert torch.isfinite(ours).all()
        assert diff.max().item() < 0.02 and diff.mean().item() < 0.002
