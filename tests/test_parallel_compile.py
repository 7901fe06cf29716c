"""Regions compiled side by side in worker processes (fastsync.accel.parallel_compile), on the CPU.

The workers get each region's layout, never its weights, and compile it as the main process
would. What matters: the listing pass runs the plain modules exactly; afterwards the main
process runs every region compiled without compiling anything itself, within float rounding
of eager (1e-5 of the output's scale, as in test_precompile.py); the files it wrote serve a
later compiler; and a worker that fails leaves that region to the main process.
"""

from __future__ import annotations

import io
import logging
import os
import shutil

import pytest
import torch
from torch import nn

from fastsync.accel import parallel_compile, precompile
from fastsync.models.resnet import ResnetBlock
from test_precompile import TOLERANCE, block, inputs, plain, rel_err
from test_warmup import FRAMES, _components, _job_chunk

pytestmark = [
    pytest.mark.skipif(not precompile.supported(), reason="this torch cannot compile ahead of time"),
    pytest.mark.skipif(shutil.which("g++") is None, reason="inductor needs a C++ compiler on the CPU"),
]


def _blocks() -> dict[str, ResnetBlock]:
    """Two alike (one compile between them), one wider, one with a scale the graph bakes in."""
    return {"a": block(0), "b": block(1), "wide": block(2, channels=24), "scaled": block(3, scale=2.0)}


def _args(name: str):
    return inputs(24 if name == "wide" else 16)


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory):
    directory = tmp_path_factory.mktemp("regions")
    store = precompile.RegionCompiler(directory)
    blocks = _blocks()
    for m in blocks.values():
        store.install(m)
    listed = {}
    with torch.no_grad(), parallel_compile.SideBySide(store, 2) as side, store.deferring(side):
        for name, m in blocks.items():
            listed[name] = (m(*_args(name)), plain(m, *_args(name)))
    after = {}
    with torch.no_grad():
        for name, m in blocks.items():
            after[name] = (m(*_args(name)), plain(m, *_args(name)))
    return directory, store, side.stats, listed, after


def test_the_listing_pass_runs_the_plain_modules(side_by_side):
    _, _, _, listed, _ = side_by_side
    for name, (ours, eager) in listed.items():
        assert torch.equal(ours, eager), name


def test_the_workers_compile_every_distinct_call_and_the_main_process_none(side_by_side):
    directory, store, stats, _, after = side_by_side
    assert stats.workers == 2 and stats.submitted == 3 and stats.compiled == 3  # a and b are one call
    assert stats.worker_compile_s > 0
    # the timeline is in order: workers ready, results back, all within the wall
    assert 0 < stats.first_ready_s <= stats.last_ready_s <= stats.wall_s
    assert stats.first_ready_s < stats.last_result_s <= stats.wall_s
    assert 0 < stats.listing_s <= stats.wall_s
    assert 0 < stats.longest_compile_s <= stats.worker_compile_s
    assert store.stats.compiled == 0 and store.stats.received == 3 and store.stats.loaded == 0
    for name, (compiled, eager) in after.items():
        assert rel_err(compiled, eager) < TOLERANCE, name
    # the bound can fail: another block's weights are far outside it
    assert rel_err(after["a"][0], after["b"][1]) > 100 * TOLERANCE
    assert len(list(directory.glob("*.bin"))) == 2  # a's key holds a's and scaled's variants


def test_a_later_compiler_loads_what_the_workers_made(side_by_side):
    directory = side_by_side[0]
    fresh = precompile.RegionCompiler(directory)
    with torch.no_grad():
        for name, m in _blocks().items():
            fresh.install(m)
            assert rel_err(m(*_args(name)), plain(m, *_args(name))) < TOLERANCE, name
    assert fresh.stats.compiled == 0 and fresh.stats.loaded == 3


def test_the_payload_keeps_layouts_aliasing_and_modes_not_values():
    m = block(4).to(memory_format=torch.channels_last)
    precompile.RegionCompiler("/nonexistent").install(m)  # its hook must not travel
    x = torch.randn(1, 16, 2, 8, 8).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        temb = torch.randn(1, 32)
        payload = parallel_compile.layout_payload(m, (x, temb, x), {"scale": 1.5})
    module, args, kwargs, modes = parallel_compile._LayoutUnpickler(io.BytesIO(payload)).load()
    assert "forward" not in module.__dict__ and type(module) is ResnetBlock
    for (name, ours), (_, theirs) in zip(module.named_parameters(), m.named_parameters()):
        assert isinstance(ours, nn.Parameter), name
        assert (ours.shape, ours.stride(), ours.dtype) == (theirs.shape, theirs.stride(), theirs.dtype), name
        assert not ours.any()  # zeros: the values stay home
    assert args[0] is args[2] and args[0].stride() == x.stride()
    assert args[1].is_inference() and not args[0].is_inference()
    assert kwargs == {"scale": 1.5} and modes == {"grad": False, "inference": True}


def test_waiting_calls_go_out_largest_region_first(tmp_path, monkeypatch):
    side = parallel_compile.SideBySide(precompile.RegionCompiler(tmp_path), 2)
    monkeypatch.setattr(side, "_start", lambda: setattr(side, "folder", tmp_path))  # no workers
    x = torch.randn(1, 2)
    for key, module in (("small", nn.Linear(2, 2)), ("large", nn.Sequential(*[nn.Linear(2, 2) for _ in range(5)])),
                        ("small, listed later", nn.Linear(2, 2)), ("middle", nn.Sequential(nn.Linear(2, 2)))):
        side(key, module, (x,), {})
    for i in range(2):
        side.tasks.put((1, 0, i, None))  # as __exit__ stops the drivers
    order = [side.tasks.get()[-1] for _ in range(6)]
    assert [side.keys.get(task) for task in order] == ["large", "middle", "small", "small, listed later", None, None]


def test_the_payload_keeps_fast_setups_swapped_classes():
    """Fast set-up swaps classes inside the regions (accel.group_norm, accel.vae_attention);
    a worker must compile the swapped ones."""
    from fastsync.accel import group_norm, vae_attention
    from fastsync.components import random_vae

    encoder = random_vae("tiny", seed=0).encoder
    assert group_norm.use_in(encoder) > 0 and vae_attention.use_in(encoder) == 1
    with torch.no_grad():
        payload = parallel_compile.layout_payload(encoder, (torch.randn(1, 3, 32, 32),), {})
    module = parallel_compile._LayoutUnpickler(io.BytesIO(payload)).load()[0]
    kinds = {type(m) for m in module.modules()}
    assert {group_norm.ChannelsLastGroupNorm, vae_attention.DirectAttention} <= kinds
    assert nn.GroupNorm not in kinds


class _FailsInAWorker(nn.Module):
    """Unpickles only in the process that made it: a worker that cannot rebuild its call."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.home = os.getpid()

    def __setstate__(self, state):
        if state["home"] != os.getpid():
            raise RuntimeError("this module cannot leave its process")
        super().__setstate__(state)

    def forward(self, x):
        return torch.relu(self.linear(x))


def test_a_failed_worker_leaves_the_region_to_the_main_process(tmp_path, caplog):
    store = precompile.RegionCompiler(tmp_path)
    m = _FailsInAWorker().eval()
    store.install(m)
    x = torch.randn(4, 8)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="fastsync.accel.parallel_compile"):
        with parallel_compile.SideBySide(store, 2) as side, store.deferring(side):
            assert torch.equal(m(x), plain(m, x))
        assert side.stats.submitted == 1 and side.stats.compiled == 0
        assert "a compile worker failed" in caplog.text
        assert rel_err(m(x), plain(m, x)) < TOLERANCE
    assert store.stats.compiled == 1  # compiled here, on its next call


def test_workers_started_early_are_the_ones_used_and_all_are_stopped(tmp_path, monkeypatch):
    early = parallel_compile.start_workers(2)
    unused = parallel_compile.start_workers(2)

    def no_new_workers(count):
        raise AssertionError("SideBySide started workers of its own")

    monkeypatch.setattr(parallel_compile, "start_workers", no_new_workers)
    store = precompile.RegionCompiler(tmp_path)
    m = block(5)
    store.install(m)
    with torch.no_grad():
        with parallel_compile.SideBySide(store, 8, early) as side, store.deferring(side):
            m(*inputs())
        assert side.stats.workers == 2 and side.stats.compiled == 1
        assert rel_err(m(*inputs()), plain(m, *inputs())) < TOLERANCE
    assert store.stats.compiled == 0 and store.stats.received == 1
    with parallel_compile.SideBySide(store, 2, unused):  # nothing listed: every region was on disk
        pass
    assert all(p.returncode is not None for p in early + unused)  # stopped, not left running


def test_workers_start_before_the_load_only_for_a_first_process_on_a_gpu(tmp_path, monkeypatch):
    from fastsync.accel.compile import regions_dir
    from fastsync.accel.setup import prestart_compile_workers
    from fastsync.engine import FastOptions

    started = []
    monkeypatch.setattr(parallel_compile, "start_workers", lambda count: started.append(count) or ["a worker"])
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    gpu = torch.device("cuda")  # only compared, never used
    assert prestart_compile_workers(FastOptions(), torch.device("cpu")) is None
    assert prestart_compile_workers(FastOptions(compile_workers=0), gpu) is None
    assert prestart_compile_workers(FastOptions(precompile=False), gpu) is None
    assert prestart_compile_workers(FastOptions(compile_workers=3), gpu) == ["a worker"]  # an empty cache
    assert started == [3]
    os.makedirs(regions_dir(), exist_ok=True)
    open(os.path.join(regions_dir(), "0" * 32 + ".bin"), "wb").close()
    assert prestart_compile_workers(FastOptions(compile_workers=3), gpu) is None  # a later process
    assert started == [3]


def test_a_warm_up_compiles_side_by_side_and_its_job_compiles_nothing(tmp_path):
    """The tiny UNet and VAE, every region installed, through the warm-up's side-by-side phase.
    At 128 px no latent is 1x1: an eager size-1 dimension can carry other strides than a compiled
    one, so a 64 px model would meet one region again in another layout and compile it here."""
    from fastsync.accel.compile import compile_vae_regions, eager_context
    from fastsync.accel.setup import compile_unet
    from fastsync.accel.warmup import _compile_side_by_side
    from fastsync.denoise import SamplingOptions

    c = _components(None, res=128, compile=True, compile_workers=2)
    store = c.cache["region_compiler"] = precompile.RegionCompiler(tmp_path)
    assert c.options.fast.compile_glue  # the upsamplers and the head go to the workers too
    assert compile_unet(c.unet, c.options.fast, store=store) and compile_vae_regions(c.vae, store=store)
    sampling = SamplingOptions(steps=20, num_frames=FRAMES)
    with torch.inference_mode():
        spent = _compile_side_by_side(c, sampling)
        assert spent["regions_parallel_workers"] == 2
        assert spent["regions_parallel_compiled"] == spent["regions_parallel_submitted"] > 10
        assert store.stats.compiled == 0
        compiled = _job_chunk(c, sampling)  # a job's chunk: every region loaded, none compiled here
        assert store.stats.compiled == 0 and store.stats.received == spent["regions_parallel_compiled"]
        with eager_context():
            eager = _job_chunk(c, sampling)
    assert rel_err(compiled, eager) < 1e-4  # 20 steps of fp32 rounding in other orders


def test_workers_get_the_parents_path_and_diffusers_switches(monkeypatch):
    seen = []

    class Started:
        def __init__(self, argv, **kwargs):
            seen.append(kwargs["env"])

    monkeypatch.setattr(parallel_compile.subprocess, "Popen", Started)
    monkeypatch.setattr(parallel_compile.atexit, "register", lambda *args: None)
    monkeypatch.delenv("USE_FLAX", raising=False)
    parallel_compile.start_workers(1)
    monkeypatch.setenv("USE_FLAX", "1")  # the user's own value wins
    parallel_compile.start_workers(1)
    assert [env["USE_FLAX"] for env in seen] == ["0", "1"]
    assert all(env["PYTHONPATH"] == os.pathsep.join(p for p in parallel_compile.sys.path if p) for env in seen)


def test_a_worker_imports_diffusers_the_parents_way_for_a_vae_block(monkeypatch):
    """A VAE block's payload names a diffusers class: the worker imports diffusers through
    fastsync.components.import_diffusers first (lean where the parent is), a UNet block's not."""
    from diffusers.models.resnet import ResnetBlock2D

    from fastsync import components

    called = []
    monkeypatch.setattr(components, "import_diffusers", lambda: called.append(True))
    x = torch.randn(1, 32, 8, 8)
    vae_block = parallel_compile.layout_payload(ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=None),
                                                (x, None), {})
    parallel_compile._LayoutUnpickler(io.BytesIO(vae_block)).load()
    assert called
    called.clear()
    parallel_compile._LayoutUnpickler(io.BytesIO(parallel_compile.layout_payload(block(5), inputs(16), {}))).load()
    assert not called
