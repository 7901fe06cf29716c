"""`fastsync profile` end to end on a CPU (issue 4): every report field, sane values, the
TensorBoard trace, report.md, and `--compare`.

One reference-mode and one fast-mode profile of the same trimmed demo clip (random tiny
weights, 3 DDIM steps: one full and two DeepCache steps per chunk), the fast one measured
against the reference one's output.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

import fastsync
from fastsync import cli, stages
from fastsync.media import writer as writer_module
from fastsync.tools import profiler
from fastsync.tools import report as report_module
from demo_clip import demo_clip

torch.set_num_threads(2)

STEADY = stages.ALL_STAGES[1:]  # 02 .. 06; 01 (loading) is a one-time cost
RUN_OPTIONS = ["--random-weights", "--model-size", "tiny", "--device", "cpu", "--steps", "3"]


class StageSpy:
    """Which stages are open, per thread, whenever the writer is closed (flushed)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.open = threading.local()
        self.at_close: list[list[str]] = []
        stage, close = stages.StageClock.stage, writer_module.VideoWriter.close
        spy = self

        @contextlib.contextmanager
        def tracked_stage(clock, name):
            stack = spy._stack()
            stack.append(name)
            try:
                with stage(clock, name):
                    yield
            finally:
                stack.pop()

        def tracked_close(writer):
            if not writer._closed:  # the first call is the one that flushes
                spy.at_close.append(list(spy._stack()))
            return close(writer)

        monkeypatch.setattr(stages.StageClock, "stage", tracked_stage)
        monkeypatch.setattr(writer_module.VideoWriter, "close", tracked_close)

    def _stack(self) -> list[str]:
        if not hasattr(self.open, "stack"):
            self.open.stack = []
        return self.open.stack


@pytest.fixture(scope="module")
def profiled(tmp_path_factory, assets_dir):
    root = tmp_path_factory.mktemp("profile")
    video, audio = demo_clip(assets_dir, root)
    ref_dir, fast_dir = root / "reference", root / "fast"
    with pytest.MonkeyPatch.context() as mp:
        spy = StageSpy(mp)
        assert cli.main(["profile", "--video", str(video), "--audio", str(audio), "--mode", "reference",
                         "--out", str(ref_dir), *RUN_OPTIONS]) == 0
    assert cli.main(["profile", "--video", str(video), "--audio", str(audio), "--mode", "fast",
                     "--out", str(fast_dir), "--reference-output", str(ref_dir / "output.mp4"), *RUN_OPTIONS]) == 0
    reports = {name: json.loads((d / "report.json").read_text()) for name, d in
               (("reference", ref_dir), ("fast", fast_dir))}
    return {"dirs": {"reference": ref_dir, "fast": fast_dir}, "reports": reports, "close_stages": spy.at_close,
            "inputs": (video, audio)}


def _cells(row: str) -> list[str]:
    """Cells of a Markdown table row; `\\|` is a pipe inside a cell."""
    assert row.startswith("|") and row.endswith("|"), row
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row[1:-1])]


def _tables(text: str) -> list[list[list[str]]]:
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(_cells(line))
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


@pytest.mark.parametrize("mode", ["reference", "fast"])
def test_report_has_every_field_with_sane_values(profiled, mode):
    r = profiled["reports"][mode]
    assert r["mode"] == mode
    assert r["settings"]["steps"] == 3 and r["settings"]["dtype"] == "torch.float32"
    assert r["settings"]["host_stages"] == ("threads" if r["mode"] == "fast" else "sequential")
    assert r["frames"] == 27  # 1 s of audio: 50 features per second, int(2 i) > 50 stops at i = 26

    # stages: wall seconds per stage; the load (01) is one-time, 02..06 are the steady state
    s = r["stages"]
    assert set(s["steady"]) == set(STEADY)
    assert stages.INIT in s["one_time"] and stages.INIT not in s["steady"]
    parts = {name.split("/", 1)[1]: v for name, v in s["one_time"].items() if name.startswith(stages.INIT + "/")}
    assert {"unet", "vae", "whisper"} <= set(parts)  # the load's parts, within the load itself
    assert sum(parts.values()) <= s["one_time"][stages.INIT]
    assert set(s["steady"]) | set(s["one_time"]) >= set(stages.ALL_STAGES)
    for name, seconds in [*s["steady"].items(), *s["one_time"].items()]:
        assert math.isfinite(seconds) and seconds >= 0, (name, seconds)
    for name in STEADY:  # every stage ran at least once during the job
        assert s["steady"][name] > 0, name
    assert s["job_wall_s"] > 0 and s["frames_per_s"] == pytest.approx(r["frames"] / s["job_wall_s"], rel=1e-2)

    assert isinstance(r["total_cpu_s"], float) and r["total_cpu_s"] > 0
    assert isinstance(r["total_cuda_s"], float) and r["total_cuda_s"] >= 0
    if not torch.cuda.is_available():
        assert r["total_cuda_s"] == 0
    memory = r["peak_memory_bytes"]
    assert set(memory) == {"allocated", "reserved", "one_time_allocated"}
    assert 0 <= memory["allocated"] <= memory["reserved"]
    if torch.cuda.is_available():
        assert memory["one_time_allocated"] > 0
    else:
        assert memory["one_time_allocated"] is None
    assert 100e6 < r["host_peak_rss_bytes"] < 1e12  # a process holding torch: more than 100 MB

    # top ops: at most 20, real ops (no stage ranges), by CUDA time with a GPU, else CPU time
    ops = r["top_ops"]
    assert 5 <= len(ops) <= report_module.TOP_OPS == 20
    assert all(set(op) == {"name", "calls", "self_cpu_s", "self_cuda_s"} for op in ops)
    assert all("|" not in op["name"] and op["calls"] >= 1 for op in ops)
    key = "self_cuda_s" if torch.cuda.is_available() else "self_cpu_s"
    times = [op[key] for op in ops]
    assert times == sorted(times, reverse=True) and times[0] > 0
    assert sum(op["self_cpu_s"] for op in ops) <= r["total_cpu_s"] + 1e-3
    assert any(op["name"].startswith("aten::") for op in ops)

    # the device's timeline: one span per chunk (16 + 11 frames), in order, inside the job,
    # and busy plus idle time adding up to the job's wall
    t = r["timeline"]
    spans = [c["device"] for c in t["chunks"]]
    assert len(spans) == 2 and 0 <= spans[0][0] <= spans[0][1] <= spans[1][0] <= spans[1][1] <= t["wall_s"]
    parts = t["busy_s"] + t["idle_before_first_s"] + t["idle_between_s"] + t["idle_after_last_s"]
    assert parts == pytest.approx(t["wall_s"], abs=0.01)
    assert t["wall_s"] <= s["job_wall_s"]
    assert r["verdict"].startswith(f"The {'GPU' if torch.cuda.is_available() else 'CPU'} was busy")
    assert ("reference mode" in r["verdict"]) == (mode == "reference")

    env = r["environment"]
    assert env["device"] and env["torch"] == torch.__version__ and env["fastsync"] == fastsync.__version__
    assert env["python"].count(".") == 2
    age = dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(env["date"])
    assert dt.timedelta(0) <= age < dt.timedelta(hours=1)


def test_reference_stages_partition_the_job(profiled):
    """Reference mode runs its stages one after another inside the job: they cannot add up
    to more than the job's wall time (a stage counted twice, or nested, would)."""
    s = profiled["reports"]["reference"]["stages"]
    assert sum(s["steady"].values()) <= s["job_wall_s"] + 1e-3


def test_encoder_flush_is_charged_to_write_video(profiled):
    """x264 keeps its look-ahead until the writer is closed: on a short clip most of the
    encoding happens in that flush, so it must be inside 06|write-video."""
    assert profiled["close_stages"] == [[stages.WRITE]]


def test_stage_clock_syncs_the_gpu_only_on_the_job_thread(monkeypatch):
    """A device-wide sync in a worker thread (align, paste, encode queue no CUDA work) would
    wait for the denoiser's kernels and charge them to the worker's stage."""
    synced_from = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: synced_from.append(threading.get_ident()))
    clock = stages.StageClock(sync_cuda=True)

    def in_worker():
        with clock.stage(stages.ALIGN):
            pass

    with ThreadPoolExecutor(1) as worker:
        worker.submit(in_worker).result()
    with clock.stage(stages.DENOISE):
        pass
    assert synced_from == [threading.get_ident()]
    assert clock.calls[stages.ALIGN] == clock.calls[stages.DENOISE] == 1


def test_gpu_time_is_counted_once(monkeypatch):
    """With a GPU, the profiler lists a kernel's time under the kernel and again under the
    CPU op that launched it, and a labelled stage also gets a GPU span: the total and the
    op table must count each kernel once, and only kernels (graph replays have no CPU op)."""
    cpu, gpu = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA

    def event(key, device_type, cpu_us, gpu_us, annotation=False):
        return SimpleNamespace(key=key, count=1, device_type=device_type, is_user_annotation=annotation,
                               self_cpu_time_total=cpu_us, self_device_time_total=gpu_us)

    events = [
        event("aten::mm", cpu, 30_000, 400_000),  # its kernel's time, seen from the CPU side
        event("sm90_gemm_kernel", gpu, 0, 400_000),
        event("aten::add", cpu, 10_000, 0),
        event("elementwise_kernel", gpu, 0, 100_000),
        event(stages.DENOISE, cpu, 5_000, 0),
        event(stages.DENOISE, gpu, 0, 2_000_000, annotation=True),  # the stage's span on the GPU
    ]
    prof = SimpleNamespace(key_averages=lambda: events)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    rows, total_cpu, total_cuda = report_module._top_ops(prof)
    assert total_cuda == pytest.approx(0.5) and total_cpu == pytest.approx(0.045)
    assert [r["name"] for r in rows] == ["sm90_gemm_kernel", "elementwise_kernel"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # on a CPU: CPU ops by CPU time
    rows, _, _ = report_module._top_ops(prof)
    assert [r["name"] for r in rows] == ["aten::mm", "aten::add"]


def test_a_cpu_job_on_a_gpu_machine_is_reported_as_a_cpu_job(monkeypatch):
    """`fastsync profile --device cpu` where CUDA is available: the job's device, not the
    machine, decides the op ranking, the device named and the verdict's wording."""
    cpu, gpu = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    events = [SimpleNamespace(key="aten::conv2d", count=3, device_type=cpu, is_user_annotation=False,
                              self_cpu_time_total=900_000, self_device_time_total=0),
              SimpleNamespace(key="stray_kernel", count=1, device_type=gpu, is_user_annotation=False,
                              self_cpu_time_total=0, self_device_time_total=5_000)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: pytest.fail("a CPU job read GPU memory"))
    args = SimpleNamespace(video="v.mp4", audio="a.wav", version="1.6", model_size="tiny", random_weights=True,
                           steps=2, guidance=1.5, seed=1, deepcache_interval=3)
    timeline = {"wall_s": 2.0, "busy_s": 1.9, "idle_before_first_s": 0.05, "idle_between_s": 0.0,
                "idle_after_last_s": 0.05, "chunks": []}
    job = SimpleNamespace(frames=27, timeline=timeline, host_top_ops=None, output="o.mp4", frames_without_face=0)
    r = report_module.build_report(mode="fast", args=args, clock=stages.StageClock(), one_time={}, job_wall_s=2.0,
                                   job=job, prof=SimpleNamespace(key_averages=lambda: events),
                                   host_peak_rss_bytes=0, quality=None, dtype="torch.float32",
                                   host_stages="threads", device=torch.device("cpu"))
    assert [op["name"] for op in r["top_ops"]] == ["aten::conv2d"]  # by CPU time, not by kernel time
    assert r["environment"]["device"].startswith("CPU")
    assert r["verdict"].startswith("The CPU was busy 1.90 s")
    assert r["peak_memory_bytes"]["allocated"] == 0
    assert "The profiler waits for the GPU" not in report_module.to_markdown(r)


def test_quality_against_the_reference_output(profiled):
    assert profiled["reports"]["reference"]["quality"] is None  # no --reference-output given
    fast = profiled["reports"]["fast"]
    q = fast["quality"]
    assert q["frames"] == fast["frames"]
    # Same weights, seed and faces; fast mode differs by fp32 rounding (channels_last,
    # attention kernel, VAE batching) and by the x264 preset: far above 20 dB.
    assert math.isfinite(q["psnr_db"]) and q["psnr_db"] > 20
    assert 0.5 < q["ssim"] <= 1
    # The mouth region is where the UNet output lands, so it holds most of the difference:
    # it must be measured (faces were found) and still close.
    assert math.isfinite(q["mouth_psnr_db"]) and 15 < q["mouth_psnr_db"] <= q["psnr_db"] + 3
    assert 0 < q["mouth_ssim"] <= 1


@pytest.mark.parametrize("mode", ["reference", "fast"])
def test_trace_and_markdown_are_written(profiled, mode):
    out = profiled["dirs"][mode]
    traces = list((out / "trace").glob("*.pt.trace.json"))
    assert len(traces) == 1
    events = json.loads(traces[0].read_text())["traceEvents"]
    labelled = {e.get("name") for e in events if "|" in str(e.get("name"))}
    # Every steady stage appears as a range in the trace, also those that fast mode runs in
    # worker threads (align, paste back, encode).
    if mode == "reference" or profiler._all_threads_config() is not None:
        assert labelled >= set(STEADY), sorted(labelled)
    else:
        assert labelled >= {stages.AUDIO, stages.DENOISE}

    # The load has its own trace, labelled as stage 01; the steady trace does not hold it.
    (init_trace,) = (out / "trace_init").glob("*.pt.trace.json")
    init_events = json.loads(init_trace.read_text())["traceEvents"]
    assert stages.INIT in {e.get("name") for e in init_events}
    assert stages.INIT not in labelled

    md = (out / "report.md").read_text()
    assert md.startswith(f"# fastsync profile: {mode} mode")
    stage_table, waited_table, ops_table = _tables(md)
    assert all(len(row) == 2 for row in stage_table), stage_table  # pipes in labels are escaped
    assert "## Where the job waited" in md and profiled["reports"][mode]["verdict"] in md
    assert waited_table[0][0] == "device busy" and len(waited_table) == 3
    assert {row[0] for row in stage_table} >= {*STEADY, f"one-time: {stages.INIT}"}
    assert all(len(row) == 4 for row in ops_table)
    assert len(ops_table) == 2 + len(profiled["reports"][mode]["top_ops"])
    if mode == "fast":
        assert "quality vs reference output: PSNR" in md


def test_host_processes_report_their_own_ops(profiled, tmp_path):
    """With the host stages in worker processes, the job's trace lacks their ops: each
    worker traces itself beside it and its top CPU ops come back in the report."""
    video, audio = profiled["inputs"]
    out = tmp_path / "processes"
    assert cli.main(["profile", "--video", str(video), "--audio", str(audio), "--mode", "fast",
                     "--host-processes", "--out", str(out), *RUN_OPTIONS]) == 0
    r = json.loads((out / "report.json").read_text())
    assert r["settings"]["host_stages"] == "processes"
    assert set(r["host_top_ops"]) == {"prepare", "finish"}
    for worker, ops in r["host_top_ops"].items():
        assert 0 < len(ops) <= report_module.TOP_OPS, worker
        assert all(op["calls"] > 0 and op["self_cpu_s"] >= 0 for op in ops)
        cpu = [op["self_cpu_s"] for op in ops]
        assert cpu == sorted(cpu, reverse=True)
        events = json.loads((out / "trace" / f"{worker}.pt.trace.json").read_text())["traceEvents"]
        names = {e.get("name") for e in events}
        assert {op["name"] for op in ops} <= names  # the report's ops are the trace's
    # the stages that ran in each worker are ranges of its own trace
    prepare = {e.get("name") for e in json.loads((out / "trace" / "prepare.pt.trace.json").read_text())["traceEvents"]}
    finish = {e.get("name") for e in json.loads((out / "trace" / "finish.pt.trace.json").read_text())["traceEvents"]}
    assert stages.ALIGN in prepare and {stages.RESTORE, stages.WRITE} <= finish
    md = (out / "report.md").read_text()
    assert "CPU ops of the prepare process" in md and "CPU ops of the finish process" in md
    assert profiled["reports"]["fast"]["host_top_ops"] is None  # threads: all in the job's trace


def test_compare_prints_ratios_and_quality(profiled, capsys):
    a, b = (profiled["dirs"][m] / "report.json" for m in ("reference", "fast"))
    capsys.readouterr()
    assert cli.main(["profile", "--compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    ra, rb = profiled["reports"]["reference"], profiled["reports"]["fast"]

    (table,) = _tables(text)
    assert table[0] == ["", "A: reference", "B: fast", "A/B"]
    assert all(len(row) == 4 for row in table), table
    rows = {row[0]: row[1:] for row in table[2:]}
    for name in STEADY:  # each stage: both seconds and the ratio A / B
        va, vb, ratio = rows[name]
        assert float(va) == pytest.approx(ra["stages"]["steady"][name], abs=1e-3)
        assert float(vb) == pytest.approx(rb["stages"]["steady"][name], abs=1e-3)
        assert ratio == f"{ra['stages']['steady'][name] / rb['stages']['steady'][name]:.2f}x"
    assert f"one-time {stages.INIT}" in rows
    assert {"peak GPU allocated", "peak GPU reserved", "host peak RSS"} <= set(rows)
    va, vb, _ = rows["device busy (s)"]
    assert float(va) == pytest.approx(ra["timeline"]["busy_s"]) and float(vb) == pytest.approx(rb["timeline"]["busy_s"])

    # B's output against A's output, over all frames and over the mouth boxes
    m = re.search(r"over (\d+) frames: PSNR ([\d.]+) dB, SSIM ([\d.]+); mouth region: PSNR ([\d.]+) dB, "
                  r"SSIM ([\d.]+)", text)
    assert m, text
    frames, psnr, ssim, mouth_psnr, mouth_ssim = int(m[1]), *map(float, m.groups()[1:])
    q = rb["quality"]  # the same two videos, measured by the fast run itself
    assert frames == q["frames"]
    assert psnr == pytest.approx(q["psnr_db"], abs=0.01) and ssim == pytest.approx(q["ssim"], abs=1e-4)
    assert mouth_psnr == pytest.approx(q["mouth_psnr_db"], abs=0.01)
    assert mouth_ssim == pytest.approx(q["mouth_ssim"], abs=1e-4)


def test_profile_without_inputs_is_a_usage_error(capsys):
    assert cli.main(["profile", "--out", "unused"]) == 2
    assert "missing --video, --audio" in capsys.readouterr().err


def test_compare_without_the_videos_uses_the_quality_b_measured(profiled, tmp_path, capsys):
    """Reports committed without their videos still compare: B's own measurement is used,
    and the line says where it came from."""
    copies = []
    for mode in ("reference", "fast"):
        report = json.loads((profiled["dirs"][mode] / "report.json").read_text())
        report["output"] = str(tmp_path / "gone" / f"{mode}.mp4")
        (tmp_path / mode).mkdir()
        (tmp_path / mode / "report.json").write_text(json.dumps(report))
        copies.append(tmp_path / mode / "report.json")
    capsys.readouterr()
    assert cli.main(["profile", "--compare", *map(str, copies)]) == 0
    text = capsys.readouterr().out
    q = profiled["reports"]["fast"]["quality"]
    assert f"PSNR {q['psnr_db']:.2f} dB" in text
    assert "from B's report, measured against" in text and q["against"] in text

    report = json.loads(copies[1].read_text())
    report["quality"] = None
    copies[1].write_text(json.dumps(report))
    assert cli.main(["profile", "--compare", *map(str, copies)]) == 0
    assert "Quality not measured" in capsys.readouterr().out
