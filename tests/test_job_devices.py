"""One job over several devices (`fastsync run --devices`, fastsync.job_devices).

The job process keeps the host pipeline and hands chunks round-robin to its own device and
to worker processes. What must hold: every chunk draws the random numbers it draws in a
one-device job (the router's skip lists, ChunkDenoiser.skip), so the file is the same bit
for bit where the devices compute alike; and a worker that dies fails the job without
leaving an output. There is no GPU here: two CPU devices stand in; the CUDA test runs two
engines on one GPU, the only way a one-GPU machine can run the path.
"""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest
import torch
from demo_clip import demo_clip
from job_clips import QUICK, expected_frames, inspect, wav_samples

from fastsync import api, cli
from fastsync.denoise import SamplingOptions
from fastsync.devices import cpu_share
from fastsync.engine import EngineOptions, FastOptions, load_components
from fastsync.job_devices import ChunkDevices, ChunkRouter, DeviceWorkerError
from fastsync.pipeline import make_denoiser

TINY = dict(random_weights=True, model_size="tiny")


def test_router_takes_turns_and_lists_what_each_device_skips():
    router = ChunkRouter(["cuda:0", "cuda:1", "cuda:2"])
    taken = [router.take(frames) for frames in (16, 16, 16, 16, 16, 7)]
    assert [who for who, _ in taken] == [0, 1, 2, 0, 1, 2]
    # each device skips exactly the chunks the others took since its last one
    assert [skipped for _, skipped in taken] == [[], [16], [16, 16], [16, 16], [16, 16], [16, 16]]
    assert router.counts() == {"cuda:0": 2, "cuda:1": 2, "cuda:2": 2}
    assert ChunkRouter(["cpu"]).counts() is None  # one device: nothing to report


@pytest.fixture(scope="module")
def components():
    return load_components(EngineOptions(device="cpu", **TINY))


def _chunk(components, frames: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    res = components.options.resolution
    faces = torch.randint(0, 256, (frames, 3, res, res), generator=g, dtype=torch.uint8)
    return faces, torch.randn(frames, 50, 384, generator=g)


def test_skip_leaves_the_generator_where_denoising_the_chunk_would(components):
    sampling = SamplingOptions(steps=2)
    first, second = _chunk(components, 16, seed=1), _chunk(components, 5, seed=2)
    whole = make_denoiser(components, sampling)
    whole(*first)
    expected = whole(*second)
    skipping = make_denoiser(components, sampling)
    skipping.skip(16)
    assert torch.equal(skipping(*second), expected)
    unskipped = make_denoiser(components, sampling)  # what a worker without the skip would make
    assert not torch.equal(unskipped(*second), expected)


@pytest.fixture
def threads_of_a_cpu_device():
    before = torch.get_num_threads()
    torch.set_num_threads(cpu_share(["cpu", "cpu"]))  # the worker's share: the same sums on both sides
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, assets_dir):
    return demo_clip(assets_dir, tmp_path_factory.mktemp("clip"))  # 27 frames: a chunk of 16, one of 11


def test_two_cpu_devices_write_the_file_of_one_device(tmp_path, clip, monkeypatch, capsys,
                                                      threads_of_a_cpu_device):
    """Tiny random models, 2 DDIM steps. The second chunk is denoised by the worker, which
    must first skip the first chunk's random numbers. Bit for bit needs the same arithmetic
    (libx264 on one thread, each job encoded in a fresh process: --host-processes; torch on
    as many threads on both sides; see tests/test_batch_devices.py)."""
    video, audio = clip
    build = api.engine_options_from_args

    def one_x264_thread(args, **overrides):
        options = build(args, **overrides)
        return dataclasses.replace(options, fast=dataclasses.replace(options.fast, x264_threads=1))

    monkeypatch.setattr(api, "engine_options_from_args", one_x264_thread)
    common = ["--video", str(video), "--audio", str(audio), "--random-weights", "--model-size", "tiny",
              "--host-processes", *QUICK]
    assert cli.main(["run", *common, "--output", str(tmp_path / "one.mp4"), "--device", "cpu"]) == 0
    assert cli.main(["run", *common, "--output", str(tmp_path / "two.mp4"), "--devices", "cpu,cpu"]) == 0
    assert "chunks denoised on cpu#0: 1, cpu#1: 1" in capsys.readouterr().out
    assert inspect(tmp_path / "two.mp4").frames == expected_frames(wav_samples(audio)) == 27
    assert (tmp_path / "two.mp4").read_bytes() == (tmp_path / "one.mp4").read_bytes()


def test_a_worker_that_dies_fails_the_job_and_leaves_no_output(tmp_path, clip):
    video, audio = clip
    options = EngineOptions(device="cpu", chunk_devices=("cpu",), fast=FastOptions(host_processes=False), **TINY)
    engine = api.LipSync.from_options(options)
    engine.devices = ChunkDevices(options, ["cpu"], SamplingOptions(steps=2))
    try:
        [worker] = engine.devices.workers
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.join(30)
        with pytest.raises(DeviceWorkerError, match=r"the worker on cpu#1 died \(exit code -9\)"):
            engine.run(video, audio, tmp_path / "out.mp4", sampling=SamplingOptions(steps=2))
    finally:
        engine.close()
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary file


def test_a_worker_that_cannot_load_names_its_device_and_the_cause(tmp_path):
    options = EngineOptions(device="cpu", checkpoint_dir=tmp_path / "nowhere", model_size="tiny")
    with pytest.raises(DeviceWorkerError, match=r"the worker on cpu#1 could not load its engine: .*nowhere"):
        ChunkDevices(options, ["cpu"], SamplingOptions(steps=2))


@pytest.mark.parametrize("command,flags,message", [
    ("run", ["--device", "cpu", "--devices", "cpu,cpu"], "run got both --device and --devices"),
    ("run", ["--devices", "cpu,,cpu"], "has an empty entry"),
    ("app", ["--device", "cpu", "--devices", "cpu,cpu"], "app got both --device and --devices"),
])
def test_bad_devices_fail_before_anything_loads(tmp_path, clip, monkeypatch, capsys, command, flags, message):
    video, audio = clip

    def must_not_load(options):
        raise AssertionError("a model was loaded before --devices was checked")

    monkeypatch.setattr(api, "load_components", must_not_load)
    inputs = ["--video", str(video), "--audio", str(audio), "--output", str(tmp_path / "o.mp4")]
    argv = [command, *(inputs if command == "run" else []), "--random-weights", "--model-size", "tiny", *flags]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.requires_cuda
def test_a_second_engine_on_the_gpu_makes_the_chunks_of_the_first(tmp_path, clip):
    """Fast mode with a worker on the same GPU (the path of a second GPU, on a machine with
    one): the worker's chunk equals the job process's own within fp16's reordering, since
    each process picks its own kernels; frames compared decoded."""
    from job_clips import decode_rgb

    from fastsync.face.cache import LandmarkCache

    video, audio = clip
    sampling = SamplingOptions(steps=2)
    fast = FastOptions(x264_threads=1)
    one = api.LipSync.from_options(EngineOptions(device="cuda:0", fast=fast, **TINY))
    # The GPU machine has no face model: every frame gets the first frame's landmarks (dlib's on the demo)
    landmarks = LandmarkCache(tmp_path / "faces.json", video, one.components.landmarker.name)
    for frame in range(200):
        landmarks.put(frame, [[560.0, 654.0], [655.0, 667.0], [595.0, 720.0]], 1)
    landmarks.save()
    one.run(video, audio, tmp_path / "one.mp4", sampling=sampling, landmarks_cache=landmarks.path)
    options = EngineOptions(device="cuda:0", fast=fast, **TINY)
    two = api.LipSync.from_options(options)
    two.warm_up(sampling)
    two.devices = ChunkDevices(options, ["cuda:0"], sampling)
    try:
        report = two.run(video, audio, tmp_path / "two.mp4", sampling=sampling, landmarks_cache=landmarks.path)
    finally:
        two.close()
    assert report.chunks_per_device == {"cuda:0#0": 1, "cuda:0#1": 1}
    a, b = decode_rgb(tmp_path / "one.mp4"), decode_rgb(tmp_path / "two.mp4")
    assert len(a) == len(b) == 27
    worst = max(int(abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a, b))
    print(f"  worst pixel difference {worst}")
    assert worst <= 8
