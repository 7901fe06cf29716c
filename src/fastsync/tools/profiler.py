"""`fastsync profile`: where the time and memory go, and what the output looks like.

One run of the pipeline under torch.profiler, with the stages of fastsync.stages
labelled. Writes into DIR: TensorBoard traces of the job (`trace/`) and of the load
(`trace_init/`), the output video, `report.json`
and `report.md`. `--compare A/report.json B/report.json` prints two reports side by
side with per-stage ratios and B's output quality against A's output.

One-time costs (loading, compilation, warm-up) are reported apart from the steady
state, so a cold start never hides in, or inflates, the per-stage figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

from fastsync import stages
from fastsync.tools.report import build_report, compare_reports, write_report


def _activities():
    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return acts


def _all_threads_config():
    """torch.profiler records only the thread that started it, unless told otherwise; fast
    mode aligns, pastes and encodes in worker threads, whose stages and ops would be
    missing from the trace and the totals. None where this torch lacks the option."""
    try:
        return torch.profiler._ExperimentalConfig(profile_all_threads=True)
    except (AttributeError, TypeError):
        return None


def profile_run(args: argparse.Namespace) -> dict:
    from fastsync.api import LipSync, engine_options_from_args, face_near_from_args, sampling_from_args

    face_near = face_near_from_args(args)  # bad values fail before the load
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / "output.mp4"
    sampling = sampling_from_args(args)
    clock = stages.StageClock(sync_cuda=True)
    one_time: dict[str, float] = {}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    # The load (one-time stage 01) gets a trace of its own, `trace_init/`, so its ops do not
    # mix into the steady-state totals and top ops. The warm-up is timed but not traced:
    # under compilation it would record every fake-tensor op dynamo traces.
    with torch.profiler.profile(activities=_activities(),
                                on_trace_ready=torch.profiler.tensorboard_trace_handler(str(out_dir / "trace_init"))):
        with clock.stage(stages.INIT):
            engine = LipSync.from_options(engine_options_from_args(args))
    # the load's parts (UNet, VAE, whisper, ...), so a slow load says which part is slow
    one_time.update({f"{stages.INIT}/{part}": s for part, s in engine.components.load_timings.items()})
    one_time.update(engine.warm_up(sampling))
    device = engine.components.device
    one_time_peak = None
    if device.type == "cuda":  # the job's own peak, below; the load's and warm-up's apart
        torch.cuda.synchronize(device)
        one_time_peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)

    trace_dir = out_dir / "trace"
    with torch.profiler.profile(activities=_activities(), experimental_config=_all_threads_config(),
                                on_trace_ready=torch.profiler.tensorboard_trace_handler(str(trace_dir))) as prof:
        job_started = time.perf_counter()
        report = engine.run(args.video, args.audio, output, sampling=sampling, progress=True, clock=clock,
                            landmarks_cache=args.landmarks_cache, host_profile=trace_dir,
                            face_near=face_near)
        job_wall = time.perf_counter() - job_started

    quality = None
    if args.reference_output:
        from fastsync.tools.quality import compare_videos

        quality = compare_videos(Path(args.reference_output), output, report.mouth_boxes).as_dict()
        quality["against"] = str(Path(args.reference_output).resolve())
    (out_dir / "mouth_boxes.json").write_text(json.dumps(report.mouth_boxes))
    result = build_report(
        mode=args.mode, args=args, clock=clock, one_time=one_time, job_wall_s=job_wall, job=report,
        prof=prof, host_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        quality=quality, dtype=str(engine.components.dtype), one_time_peak_allocated=one_time_peak,
        host_stages=_host_stages(args.mode, engine.components), device=device,
    )
    write_report(result, out_dir)
    return result


def profile_from_args(args: argparse.Namespace) -> int:
    if args.compare:
        a, b = args.compare
        print(compare_reports(Path(a), Path(b)))
        return 0
    missing = [flag for flag in ("video", "audio", "out") if getattr(args, flag) is None]
    if missing:
        print(f"fastsync profile: missing --{', --'.join(missing)} (or use --compare A B)", file=sys.stderr)
        return 2
    result = profile_run(args)
    print((Path(args.out) / "report.md").read_text())
    return 0 if result else 1


def _host_stages(mode: str, components) -> str:
    """Where the job's host stages ran (with processes, each worker's ops are reported apart)."""
    from fastsync.pipeline import host_stages_in_processes

    if mode != "fast":
        return "sequential"
    return "processes" if host_stages_in_processes(components) else "threads"
