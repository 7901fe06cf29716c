"""FastOptions.host_processes: the host stages in two worker processes.

The processes run the same per-chunk functions as the threads (fastsync.chunks), so a
job must give the same file; with libx264 on one thread the encoded frames are equal bit
for bit, but for the known libx264 fault in one corner macroblock when the encoding process
is long-lived (tests/job_clips.py). Failures on either side must surface with their cause and leave no output.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from demo_clip import demo_clip
from fastsync import stages
from fastsync.denoise import ChunkDenoiser, SamplingOptions
from fastsync.engine import EngineOptions, FastOptions
from fastsync.errors import NoFaceError
from fastsync.host_processes import HostWorkerError
from fastsync.media.video import iter_frames_25fps
from job_clips import assert_same_frames_but_x264_corner, write_clip

SAMPLING = SamplingOptions(steps=3)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, assets_dir):
    return demo_clip(assets_dir, tmp_path_factory.mktemp("clip"))


def _engine(host_processes: bool):
    from fastsync.api import LipSync

    options = EngineOptions(random_weights=True, model_size="tiny", device="cpu", mode="fast",
                            fast=FastOptions(host_processes=host_processes, x264_threads=1))
    return LipSync.from_options(options)


def _workers_left() -> list[str]:
    return [p.name for p in multiprocessing.active_children() if p.name.startswith("fastsync-")]


def test_processes_give_the_threads_output(clip, tmp_path):
    out = {}
    for host_processes in (False, True):
        cache = tmp_path / f"faces-{host_processes}.json"
        report = _engine(host_processes).run(*clip, tmp_path / f"{host_processes}.mp4", sampling=SAMPLING,
                                             progress=False, landmarks_cache=cache)
        assert cache.is_file()  # the prepare process saved what it detected
        out[host_processes] = (report, np.stack(list(iter_frames_25fps(report.output))))
    (threads, frames_t), (procs, frames_p) = out[False], out[True]
    assert procs.frames == threads.frames == len(frames_p) == 27
    assert procs.frames_without_face == threads.frames_without_face == 0
    assert procs.mouth_boxes == threads.mouth_boxes
    # threads encode in this long-lived process: the known libx264 fault may touch one corner
    assert_same_frames_but_x264_corner(frames_p, frames_t)
    # the mouth was regenerated (random weights make it noise), so equality is not trivial
    source = np.stack(list(iter_frames_25fps(clip[0], max_frames=27)))
    assert np.abs(frames_p.astype(int) - source).max() > 50
    for stage in (stages.ALIGN, stages.RESTORE, stages.WRITE):
        assert procs.stages[stage] > 0, stage  # the workers' own clocks reach the report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["False.mp4", "True.mp4", "faces-False.json",
                                                         "faces-True.json"]
    assert _workers_left() == []


def test_a_worker_failure_names_its_cause_and_leaves_nothing(clip, tmp_path):
    """The prepare process cannot save the landmark cache into a missing folder: the job
    fails with that process's error, and the finishing process drops its file."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(HostWorkerError, match="prepare worker failed: FileNotFoundError"):
        _engine(True).run(*clip, out_dir / "result.mp4", sampling=SAMPLING, progress=False,
                          landmarks_cache=tmp_path / "missing" / "faces.json")
    assert list(out_dir.iterdir()) == []
    assert _workers_left() == []


def test_a_failure_in_the_job_aborts_the_workers(clip, tmp_path, monkeypatch):
    calls = []
    denoise = ChunkDenoiser.__call__

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the GPU fell over")
        return denoise(self, *args, **kwargs)

    monkeypatch.setattr(ChunkDenoiser, "__call__", failing)
    with pytest.raises(RuntimeError, match="the GPU fell over"):
        _engine(True).run(*clip, tmp_path / "result.mp4", sampling=SAMPLING, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the output nor its hidden temporary file
    assert _workers_left() == []


def test_a_chunk_is_handed_on_while_the_next_is_queued(clip, tmp_path, monkeypatch):
    """Chunk k goes to the finishing process once its faces have landed, not after chunk
    k+1 has been queued: a short last chunk runs eagerly (half a second on a GPU) and the
    last full chunk's paste-back must not wait for it. Here each denoise call after the
    first waits for the previous chunk's hand-over; handing over afterwards would time out."""
    from fastsync.pipeline import Job

    handed: dict[int, threading.Event] = {}
    waited: list[bool] = []
    denoise, hand_over = ChunkDenoiser.__call__, Job._hand_over

    def denoise_after_hand_over(self, faces, audio):
        calls = len(waited)
        if calls:
            waited.append(handed.setdefault(calls - 1, threading.Event()).wait(timeout=20))
        else:
            waited.append(True)
        return denoise(self, faces, audio)

    def recording_hand_over(self, host, chunk, pending, bar):
        handed.setdefault(chunk.index, threading.Event()).set()
        return hand_over(self, host, chunk, pending, bar)

    monkeypatch.setattr(ChunkDenoiser, "__call__", denoise_after_hand_over)
    monkeypatch.setattr(Job, "_hand_over", recording_hand_over)
    report = _engine(True).run(*clip, tmp_path / "result.mp4", sampling=SAMPLING, progress=False)
    assert report.frames == 27 and waited == [True, True]  # 16 + 11 frames: two chunks
    assert len(report.mouth_boxes) == 27
    assert _workers_left() == []


def test_the_workers_run_below_the_job_s_priority(clip, tmp_path, monkeypatch):
    """The thread feeding the GPU must not lose its core to libx264's threads: both worker
    processes are niced, the job process is not."""
    from fastsync.host_processes import WORKER_NICE

    seen: dict[str, int] = {}
    denoise = ChunkDenoiser.__call__

    def looking(self, faces, audio):
        for child in multiprocessing.active_children():
            if child.name.startswith("fastsync-"):
                seen[child.name] = os.getpriority(os.PRIO_PROCESS, child.pid)
        return denoise(self, faces, audio)

    monkeypatch.setattr(ChunkDenoiser, "__call__", looking)
    job_nice = os.getpriority(os.PRIO_PROCESS, 0)
    _engine(True).run(*clip, tmp_path / "result.mp4", sampling=SAMPLING, progress=False)
    expected = min(job_nice + WORKER_NICE, 19)
    assert seen == {"fastsync-prepare": expected, "fastsync-finish": expected}
    assert os.getpriority(os.PRIO_PROCESS, 0) == job_nice


def test_a_video_without_a_face_keeps_its_error_class(tmp_path, clip):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(8)]
    video = write_clip(tmp_path / "noise.mp4", frames)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(NoFaceError, match="no face was found"):
        _engine(True).run(video, clip[1], out_dir / "result.mp4", sampling=SAMPLING, progress=False)
    assert list(out_dir.iterdir()) == []
    assert _workers_left() == []


def test_an_unguarded_script_runs_its_job_once(clip, tmp_path):
    """multiprocessing runs the main script again in each child; a script without the
    `if __name__ == "__main__":` guard would run its job again in both workers (and they
    would die or write twice). The workers leave the main script out: the script's top
    level runs once, in its own process, and the job writes its output."""
    script = tmp_path / "unguarded.py"
    runs = tmp_path / "runs.log"
    out = tmp_path / "out" / "result.mp4"
    out.parent.mkdir()
    script.write_text(
        "import os\n"
        "from fastsync.api import LipSync\n"
        "from fastsync.denoise import SamplingOptions\n"
        "from fastsync.engine import EngineOptions, FastOptions\n"
        f"with open({str(runs)!r}, 'a') as log:\n"
        "    log.write(f'{os.getpid()}\\n')\n"
        "engine = LipSync.from_options(EngineOptions(random_weights=True, model_size='tiny', device='cpu',\n"
        "                                            fast=FastOptions(host_processes=True)))\n"
        f"engine.run({str(clip[0])!r}, {str(clip[1])!r}, {str(out)!r}, sampling=SamplingOptions(steps=1),\n"
        "           progress=False)\n"
        "print('job process', os.getpid())\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_pid = proc.stdout.split("job process")[-1].split()[0]
    assert runs.read_text().split() == [job_pid]  # the script's body ran in its own process only
    assert [p.name for p in out.parent.iterdir()] == ["result.mp4"]


def test_the_default_chooses_processes_on_a_gpu_only():
    """FastOptions.host_processes=None: processes for a fast job on a GPU, threads on a CPU,
    in reference mode, or with a custom landmarker; an explicit choice wins."""
    from types import SimpleNamespace

    from fastsync.pipeline import host_stages_in_processes

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    own = SimpleNamespace(kind="insightface")

    def chosen(device, fast=None, mode="fast", landmarker=own):
        options = SimpleNamespace(mode=mode, fast=fast or FastOptions())
        return host_stages_in_processes(SimpleNamespace(options=options, device=device, landmarker=landmarker))

    assert chosen(cuda) and not chosen(cpu)
    assert not chosen(cuda, mode="reference")
    assert not chosen(cuda, landmarker=object())  # a custom one: threads, quietly
    assert chosen(cuda, FastOptions(host_processes=True), landmarker=object())  # asked for: _host_specs says no
    assert chosen(cpu, FastOptions(host_processes=True)) and not chosen(cuda, FastOptions(host_processes=False))


def test_cli_flags_choose_the_host_stages():
    """The command line: the default (processes for a fast job on a GPU), or either when asked for."""
    from fastsync.api import engine_options_from_args
    from fastsync.cli import build_parser

    def host(*flags):
        args = ["run", "--video", "v.mp4", "--audio", "a.wav", "--output", "o.mp4", *flags]
        return engine_options_from_args(build_parser().parse_args(args)).fast

    assert host() == host("--device", "cuda") == FastOptions()  # decided by the job's device
    assert host("--host-threads") == FastOptions(host_processes=False)
    assert host("--device", "cpu", "--host-processes") == FastOptions(host_processes=True)
    with pytest.raises(SystemExit):  # one or the other
        host("--host-processes", "--host-threads")


@pytest.mark.requires_cuda
@pytest.mark.skipif(importlib.util.find_spec("dlib") is None, reason="needs the dlib landmarker, absent here")
def test_processes_give_the_threads_output_on_cuda(clip, tmp_path):
    """The job process owns CUDA; the workers come from a fork server that never touched
    it. Same file as the threaded job (compile off: minutes to build, tested elsewhere).
    Faces are detected with dlib, which GPU machines without the package lack."""
    from fastsync.api import LipSync

    frames = {}
    for host_processes in (False, True):
        fast = FastOptions(host_processes=host_processes, x264_threads=1, compile=False)
        engine = LipSync.from_options(EngineOptions(random_weights=True, model_size="tiny", device="cuda",
                                                    mode="fast", fast=fast))
        report = engine.run(*clip, tmp_path / f"{host_processes}.mp4", sampling=SAMPLING, progress=False)
        frames[host_processes] = np.stack(list(iter_frames_25fps(report.output)))
    assert_same_frames_but_x264_corner(frames[True], frames[False])
    assert _workers_left() == []
