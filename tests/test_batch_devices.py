"""`fastsync batch --devices`: one worker process per device, jobs handed out as workers
become idle (fastsync.batch_devices).

The queue's rules are checked with cheap fake engines (tests/batch_fakes.py) in real
spawned workers: each job runs once, a held job does not hold back the others, failures,
skips and dead workers are reported by device. One end-to-end run with the tiny random
models and two CPU workers must write the files of the single-process batch, bit for bit.
There is no GPU here: CUDA devices are checked only as `--devices` values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import batch_fakes
import pytest
import torch
from demo_clip import demo_clip
from job_clips import QUICK, expected_frames, inspect, trim_wav, wav_samples
from test_sigterm import _gone, _processes_with  # finds a run's processes by a marker in their environment

from fastsync import api, cli, devices
from fastsync.batch import BatchJob, landmark_files
from fastsync.batch_devices import run_batch_on_devices
from fastsync.denoise import SamplingOptions
from fastsync.devices import cpu_share
from fastsync.engine import EngineOptions
from fastsync.errors import FastsyncError
from fastsync.output import OutputOptions

TWO_CPUS = ["cpu", "cpu"]


def _run(folder, names, *, factory=batch_fakes.make_engine, **options):
    jobs = [BatchJob(folder / "v.mp4", folder / "a.wav", folder / name) for name in names]
    lines = []
    result = run_batch_on_devices(EngineOptions(), jobs, TWO_CPUS, echo=lines.append, engine_factory=factory,
                                  **options)
    return result, lines


def _line(lines, name):
    [line] = [line for line in lines if name in line]
    return line


def test_every_job_runs_once_and_a_held_job_does_not_hold_back_the_others(tmp_path):
    """hold-6 (the first job) waits for six other outputs: only the other worker can make
    them, so the batch ends only if jobs go to whichever worker is free, not in halves."""
    others = ["a.mp4", "b.mp4", "c.mp4", "d.mp4", "e.mp4", "nested.mp4"]
    (done, skipped, failed), lines = _run(tmp_path, ["hold-6.mp4", *others])
    assert (done, skipped, failed) == (7, 0, 0), lines
    runs = batch_fakes.runs(tmp_path)
    assert sorted(name for name, _ in runs) == sorted(["hold-6.mp4", *others])  # each job exactly once
    started = dict(runs)
    assert len({started[name] for name in others}) == 1  # one worker ran all the others...
    assert started["hold-6.mp4"] != started["a.mp4"]  # ...while the other held the first
    assert re.search(r"\] cpu#[01]: wrote hold-6.mp4", "\n".join(lines))  # the device is named
    assert lines[-1] == "batch: 7 done, 0 skipped, 0 failed"


def test_each_job_gets_its_videos_landmark_file(tmp_path):
    jobs = [BatchJob(tmp_path / f"{name}.mp4", tmp_path / "a.wav", tmp_path / f"{name}-out.mp4")
            for name in ("first", "second")]
    with landmark_files(jobs, tmp_path / "landmarks") as jobs:
        result = run_batch_on_devices(EngineOptions(), jobs, TWO_CPUS, echo=lambda line: None,
                                      engine_factory=batch_fakes.make_engine)
    assert result == (2, 0, 0)
    made = {path.read_text(): path.name for path in (tmp_path / "landmarks").iterdir()}
    assert made.keys() == {"first-out.mp4", "second-out.mp4"}  # one file per video, in the folder given
    assert made["first-out.mp4"].startswith("first-") and made["second-out.mp4"].startswith("second-")


def test_each_job_gets_its_own_sampling_and_face_on_the_workers(tmp_path):
    jobs = [BatchJob(tmp_path / "v.mp4", tmp_path / "a.wav", tmp_path / f"{name}.mp4", settings=settings,
                     face_near=near, encoding_values=(("crf", 12),) if settings else ())
            for name, settings, near in (("own", (("seed", 3),), (5.0, 6.0)), ("plain", (), None))]
    result = run_batch_on_devices(EngineOptions(), jobs, TWO_CPUS, echo=lambda line: None,
                                  engine_factory=batch_fakes.make_engine, sampling=SamplingOptions(seed=9))
    assert result == (2, 0, 0)
    assert [(tmp_path / f"{name}.seed").read_text() for name in ("own", "plain")] == [
        f"3 (5.0, 6.0) {OutputOptions(crf=12)}", "9 None None"]


def test_failures_are_reported_with_the_device_and_existing_outputs_skipped(tmp_path):
    (tmp_path / "exists.mp4").write_text("from an earlier batch")
    names = ["ok1.mp4", "fail.mp4", "exists.mp4", "ok2.mp4"]
    result, lines = _run(tmp_path, names)
    assert result == (2, 1, 1), lines
    failed = _line(lines, "FAILED")
    assert re.match(r"\[2/4\] cpu#[01]: FAILED: ", failed) and "v.mp4: cannot read it" in failed
    assert "[3/4] skip:" in _line(lines, "exists.mp4")
    assert sorted(name for name, _ in batch_fakes.runs(tmp_path)) == ["fail.mp4", "ok1.mp4", "ok2.mp4"]

    result, lines = _run(tmp_path, names, overwrite=True)
    assert result == (3, 0, 1), lines
    assert (tmp_path / "exists.mp4").read_text().startswith("cpu ")  # rewritten by a worker


@pytest.mark.parametrize("how", ["die", "crash"])
def test_a_worker_that_dies_mid_job_fails_that_job_and_the_other_takes_the_rest(tmp_path, how):
    result, lines = _run(tmp_path, [f"{how}.mp4", "a.mp4", "b.mp4", "c.mp4"])
    assert result == (3, 0, 1), lines
    failed = _line(lines, "FAILED")
    assert re.match(r"\[1/4\] cpu#[01]: FAILED: ", failed)
    expected = "died (exit code 3) while running this job" if how == "die" else "RuntimeError: the fake GPU fell over"
    assert expected in failed
    started = dict(batch_fakes.runs(tmp_path))
    survivor = {started[name] for name in ("a.mp4", "b.mp4", "c.mp4")}
    assert len(survivor) == 1 and started[f"{how}.mp4"] not in survivor
    assert all((tmp_path / name).exists() for name in ("a.mp4", "b.mp4", "c.mp4"))


def test_when_every_worker_dies_the_remaining_jobs_fail(tmp_path):
    result, lines = _run(tmp_path, ["die1.mp4", "die2.mp4", "a.mp4", "b.mp4"])
    assert result == (0, 0, 4), lines
    assert sum("died (exit code 3)" in line for line in lines) == 2
    assert [line for line in lines if "no device's worker is left" in line] == [
        "[3/4] FAILED: not run: no device's worker is left (see above)",
        "[4/4] FAILED: not run: no device's worker is left (see above)"]
    assert sorted(name for name, _ in batch_fakes.runs(tmp_path)) == ["die1.mp4", "die2.mp4"]


def test_an_engine_that_cannot_load_is_reported_with_its_message(tmp_path):
    result, lines = _run(tmp_path, ["a.mp4", "b.mp4"], factory=batch_fakes.broken_engine)
    assert result == (0, 0, 2), lines
    assert sum("could not load the engine" in line and "no weights here" in line for line in lines) == 2


def test_nothing_starts_when_every_output_exists(tmp_path):
    (tmp_path / "a.mp4").write_text("x")
    result, lines = _run(tmp_path, ["a.mp4"], factory=batch_fakes.broken_engine)  # would fail if loaded
    assert result == (0, 1, 0) and lines[-1] == "batch: 0 done, 1 skipped, 0 failed"


# -- --devices values -----------------------------------------------------------------------------
def test_an_unguarded_script_runs_its_batch_once(tmp_path):
    """A script without the `if __name__ == "__main__":` guard: its workers would run the
    script again and fail there (multiprocessing forbids a child to start processes while it
    imports its main module). With the factory in a module of its own, the workers leave
    the script out: its body runs once and both jobs are done."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import os\n"
        "from pathlib import Path\n"
        "import batch_fakes\n"
        "from fastsync.batch import BatchJob\n"
        "from fastsync.batch_devices import run_batch_on_devices\n"
        "from fastsync.engine import EngineOptions\n"
        f"folder = Path({str(tmp_path)!r})\n"
        "with open(folder / 'script.log', 'a') as log:\n"
        "    log.write(f'{os.getpid()}\\n')\n"
        "jobs = [BatchJob(folder / 'v.mp4', folder / 'a.wav', folder / n) for n in ('one.mp4', 'two.mp4')]\n"
        "result = run_batch_on_devices(EngineOptions(), jobs, ['cpu', 'cpu'], engine_factory=batch_fakes.make_engine)\n"
        "print('result', *result, os.getpid())\n")
    path = os.pathsep.join([os.path.dirname(__file__), *sys.path])
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": path})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    *counts, pid = proc.stdout.split("result")[-1].split()
    assert counts == ["2", "0", "0"], proc.stdout[-2000:]
    assert (tmp_path / "script.log").read_text().split() == [pid]
    assert sorted(name for name, _ in batch_fakes.runs(tmp_path)) == ["one.mp4", "two.mp4"]


def test_devices_are_normalised(monkeypatch):
    assert devices.parse_devices("cpu, cpu") == TWO_CPUS
    monkeypatch.setattr(devices, "_gpu_count", lambda: 3)  # as on a host with three GPUs
    assert devices.parse_devices("all") == ["cuda:0", "cuda:1", "cuda:2"]
    assert devices.parse_devices("cuda,cuda:2") == ["cuda:0", "cuda:2"]


@pytest.mark.parametrize("spec, gpus, message", [
    ("cuda:0,cuda:1", 0, "CUDA is not available here"),
    ("all", 0, "found no CUDA GPU"),
    ("cuda:0,cuda:2", 2, "cuda:2 is out of range; 2 GPU"),
    ("cuda:1,cuda:1", 2, "lists cuda:1 twice"),
    ("cuda,cuda:0", 2, "lists cuda:0 twice"),
    ("gpu0,gpu1", 2, "unknown device 'gpu0'"),
    ("mps,cpu", 2, "'mps' is not supported"),
    ("cpu,cuda:0", 2, "mixes CPU and GPU"),
    ("cpu,,cpu", 2, "has an empty entry"),
])
def test_bad_devices_fail_before_anything_loads(tmp_path, monkeypatch, capsys, spec, gpus, message):
    monkeypatch.setattr(devices, "_gpu_count", lambda: gpus)
    monkeypatch.setattr(api.LipSync, "from_options", _must_not_load)
    (tmp_path / "jobs.csv").write_text("video,audio,output\nv.mp4,a.wav,o.mp4\n")
    assert cli.main(["batch", str(tmp_path / "jobs.csv"), "--devices", spec]) == 2
    err = capsys.readouterr().err
    assert message in err and "hint:" in err and "--devices" in err
    with pytest.raises(FastsyncError, match=re.escape(message)):
        run_batch_on_devices(EngineOptions(), [], spec)  # the API checks the same way


def test_device_and_devices_together_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(api.LipSync, "from_options", _must_not_load)
    (tmp_path / "jobs.csv").write_text("video,audio,output\nv.mp4,a.wav,o.mp4\n")
    assert cli.main(["batch", str(tmp_path / "jobs.csv"), "--device", "cpu", "--devices", "cpu,cpu"]) == 2
    assert "both --device and --devices" in capsys.readouterr().err


def test_one_device_keeps_the_batch_in_this_process(tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(api.LipSync, "from_options", lambda options: loaded.append(options) or
                        batch_fakes.FakeEngine(options.device))
    (tmp_path / "jobs.csv").write_text("video,audio,output\nv.mp4,a.wav,o.mp4\n")
    assert cli.main(["batch", str(tmp_path / "jobs.csv"), "--devices", "cpu"]) == 0
    [options] = loaded
    assert options.device == "cpu" and not options.fast.host_processes_on(torch.device("cpu"))
    assert (tmp_path / "o.mp4").read_text() == f"cpu {os.getpid()}"  # written by this process


def _must_not_load(options):
    raise AssertionError("a model was loaded before --devices was checked")


# -- end to end -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip(tmp_path_factory, assets_dir):
    folder = tmp_path_factory.mktemp("clip")
    video, audio = demo_clip(assets_dir, folder)
    return video, audio, trim_wav(assets_dir / "demo2_audio.wav", folder / "demo2_short.wav", 1.0)


@pytest.fixture
def threads_of_a_cpu_worker():
    before = torch.get_num_threads()
    torch.set_num_threads(cpu_share(TWO_CPUS))
    yield
    torch.set_num_threads(before)


def test_two_cpu_workers_write_the_files_of_the_single_process_batch(tmp_path, clip, monkeypatch, capsys,
                                                                     threads_of_a_cpu_worker):
    """Tiny random models, 2 DDIM steps, the same flags but --devices on both sides.

    The host stages run in processes (--host-processes), so the workers' own workers must
    start. Bit for bit needs the same arithmetic: libx264 on one thread (the options reach
    the workers pickled), and torch on as many threads as each CPU worker gets, since the
    CPU kernels' sums depend on the thread count (1 against 2 threads moved mouth pixels
    by up to 53 here, with random weights). With the host stages in threads instead, the
    single-process batch's *second* job came out different in 3 of 8 runs here, only in
    the bottom-right 16x8 pixels (width 360 ends in half a macroblock), by at most 4
    levels. With processes each job is encoded in a fresh process: 18 of 18 runs matched.
    The frames handed to the writer are the same; libx264 itself reads memory it never
    initialised, so its bytes depend on what a long-lived process's heap held before
    (tests/test_media_writer.py, the test on fresh processes)."""
    video, audio1, audio2 = clip
    build = api.engine_options_from_args

    def one_x264_thread(args, **overrides):
        options = build(args, **overrides)
        return dataclasses.replace(options, fast=dataclasses.replace(options.fast, x264_threads=1))

    monkeypatch.setattr(api, "engine_options_from_args", one_x264_thread)
    model = ["--random-weights", "--model-size", "tiny", "--host-processes", *QUICK]
    runs = {"single": ["--device", "cpu"], "multi": ["--devices", "cpu,cpu"]}
    for name, flags in runs.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "jobs.json").write_text(json.dumps([
            {"video": str(video), "audio": str(audio1), "output": "one.mp4"},
            {"video": str(video), "audio": str(audio2), "output": "two.mp4"}]))
        assert cli.main(["batch", str(folder / "jobs.json"), *model, *flags]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\[1/2\] cpu#[01]: 27 frames", out, re.MULTILINE), out
    assert re.search(r"^\[2/2\] cpu#[01]: 27 frames", out, re.MULTILINE), out
    for output, audio in (("one.mp4", audio1), ("two.mp4", audio2)):
        multi, single = tmp_path / "multi" / output, tmp_path / "single" / output
        assert inspect(multi).frames == expected_frames(wav_samples(audio)) == 27
        assert multi.read_bytes() == single.read_bytes(), output
    assert (tmp_path / "multi" / "one.mp4").read_bytes() != (tmp_path / "multi" / "two.mp4").read_bytes()


def test_sigterm_stops_the_workers_and_leaves_no_output(tmp_path, assets_dir, clip):
    """SIGTERM (what a scheduler sends) once a worker is writing: every worker unwinds its
    job, so no output and no temporary file is left, and no process outlives the batch.
    3 s of audio on the short clip (looped): the jobs last long enough to be interrupted."""
    audio = trim_wav(assets_dir / "demo1_audio.wav", tmp_path / "a.wav", 3.0)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    video = clip[0]
    (tmp_path / "jobs.json").write_text(json.dumps([
        {"video": str(video), "audio": str(audio), "output": f"out/{name}.mp4"} for name in ("one", "two")]))
    marker = f"fastsync-batch-sigterm-{uuid.uuid4().hex}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastsync.cli", "batch", str(tmp_path / "jobs.json"), "--devices", "cpu,cpu",
         "--random-weights", "--model-size", "tiny"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "FASTSYNC_TEST_MARK": marker, "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.time() + 120
    while time.time() < deadline and not any(out_dir.iterdir()) and proc.poll() is None:
        time.sleep(0.2)  # a writer's temporary file exists: a job is mid-way
    assert proc.poll() is None, f"the batch ended before it could be interrupted: {proc.communicate()}"
    assert len(_processes_with(marker)) >= 3  # the batch process and its two workers
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert list(out_dir.iterdir()) == []
    assert _gone(marker), "a worker process outlived the batch"


@pytest.mark.parametrize(("name", "expected"), [("cuda:1", [torch.device("cuda:1")]), ("cuda", []), ("cpu", [])])
def test_make_current_sets_only_a_named_gpu(monkeypatch, name, expected):
    """torch.cuda.set_device refuses a bare "cuda" (it names no GPU: it already is the current
    one), which broke every `--device cuda` load on a GPU before this check."""
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(torch.device(d)))
    devices.make_current(name)
    assert calls == expected


def test_the_report_names_the_device_of_each_job(tmp_path):
    from fastsync.batch_report import BatchReport

    (tmp_path / "exists.mp4").write_text("from an earlier batch")
    jobs = [BatchJob(tmp_path / "v.mp4", tmp_path / "a.wav", tmp_path / name)
            for name in ("ok1.mp4", "fail.mp4", "exists.mp4", "ok22.mp4")]
    report = BatchReport(jobs, tmp_path / "report.json")
    result = run_batch_on_devices(EngineOptions(), jobs, TWO_CPUS, echo=lambda line: None,
                                  engine_factory=batch_fakes.make_engine, report=report)
    assert result == (2, 1, 1)
    rows = json.loads((tmp_path / "report.json").read_text())["jobs"]
    assert [row["status"] for row in rows] == ["done", "failed", "skipped", "done"]
    assert {rows[i]["device"] for i in (0, 1, 3)} <= {"cpu#0", "cpu#1"} and rows[2]["device"] is None
    assert (rows[0]["frames"], rows[3]["frames"]) == (len("ok1.mp4"), len("ok22.mp4"))  # sent back by the workers
    assert "cannot read it" in rows[1]["error"]
