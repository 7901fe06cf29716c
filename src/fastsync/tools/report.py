"""The profiler's report: build it from a run, write it as JSON and Markdown, compare two."""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path

import torch

import fastsync
from fastsync import stages

TOP_OPS = 20


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"


def _on_device(e) -> bool:
    """A kernel or copy that ran on the GPU: not a CPU op, not a labelled range's GPU span."""
    return e.device_type != torch.autograd.DeviceType.CPU and not getattr(e, "is_user_annotation", False)


def _top_ops(prof, by_device: bool | None = None) -> tuple[list[dict], float, float]:
    """Top ops, total CPU seconds, total GPU seconds.

    With a GPU the table ranks the GPU's own work (kernels, copies) by its time: a CPU op's
    "self device time" is the same kernels counted again, and kernels replayed from a CUDA
    graph belong to no CPU op at all, so only the device side is comparable between modes.
    The total sums device activities once, leaving out the stage ranges' GPU spans.
    Without a GPU, or with `by_device=False` (a host worker process, which runs no
    kernels), it ranks CPU ops by self CPU time.
    """
    events = prof.key_averages()
    use_cuda = torch.cuda.is_available() if by_device is None else by_device

    def device_us(e) -> float:
        return float(getattr(e, "self_device_time_total", 0.0) or 0.0)

    total_cpu = sum(e.self_cpu_time_total for e in events) / 1e6
    total_cuda = sum(device_us(e) for e in events if _on_device(e)) / 1e6
    if use_cuda:
        key, candidates = device_us, [e for e in events if _on_device(e)]
    else:
        key, candidates = (lambda e: e.self_cpu_time_total), list(events)
    # Stage labels are ranges, not ops: keep them out of the op table.
    ops = [e for e in candidates if "|" not in e.key and key(e) > 0]
    ops.sort(key=key, reverse=True)
    rows = [{
        "name": e.key,
        "calls": e.count,
        "self_cpu_s": round(e.self_cpu_time_total / 1e6, 4),
        "self_cuda_s": round(device_us(e) / 1e6, 4),
    } for e in ops[:TOP_OPS]]
    return rows, round(total_cpu, 4), round(total_cuda, 4)


def build_report(*, mode, args, clock, one_time, job_wall_s, job, prof, host_peak_rss_bytes, quality, dtype,
                 host_stages: str, device: torch.device, one_time_peak_allocated: int | None = None) -> dict:
    """`device`: the job's. Its kind, not whether this machine has a GPU, decides what the
    report ranks and names: a `--device cpu` job on a GPU machine is a CPU job."""
    on_gpu = device.type == "cuda"
    top_ops, total_cpu, total_cuda = _top_ops(prof, by_device=on_gpu)
    steady = {k: v for k, v in clock.as_dict().items() if k != stages.INIT}
    # The job's peak; the load and warm-up (compilation, graph capture) peak apart.
    memory = {"allocated": 0, "reserved": 0, "one_time_allocated": one_time_peak_allocated}
    if on_gpu:
        memory.update(allocated=torch.cuda.max_memory_allocated(device), reserved=torch.cuda.max_memory_reserved(device))
    return {
        "mode": mode,
        "inputs": {"video": str(args.video), "audio": str(args.audio)},
        "settings": {"version": args.version, "model_size": args.model_size, "random_weights": args.random_weights,
                     "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
                     "deepcache_interval": args.deepcache_interval, "dtype": dtype,
                     # where fast mode's host stages ran; the top ops cover this process only
                     "host_stages": host_stages},
        "frames": job.frames,
        "stages": {
            "one_time": {stages.INIT: round(clock.seconds.get(stages.INIT, 0.0), 4), **one_time},
            "steady": steady,
            "job_wall_s": round(job_wall_s, 4),
            "frames_per_s": round(job.frames / job_wall_s, 3) if job_wall_s else None,
        },
        "total_cpu_s": total_cpu,
        "total_cuda_s": total_cuda,
        "peak_memory_bytes": memory,
        "host_peak_rss_bytes": host_peak_rss_bytes,
        "top_ops": top_ops,
        # when the device worked on each chunk, its idle time, and what that says
        "timeline": job.timeline,
        "verdict": _verdict(job.timeline, "GPU" if on_gpu else "CPU", host_stages),
        # with the host stages in worker processes: each worker's own top CPU ops
        "host_top_ops": job.host_top_ops,
        "quality": quality,
        "output": str(Path(job.output).resolve()),
        "frames_without_face": job.frames_without_face,
        "environment": {
            "device": _device_name(device),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "fastsync": fastsync.__version__,
            "python": platform.python_version(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
    }


def _verdict(timeline: dict, device: str, host_stages: str) -> str | None:
    from fastsync.timeline import verdict

    if not timeline:
        return None
    return verdict(timeline, device, host_stages)


def _gb(n) -> str:
    return f"{n / 1e9:.2f} GB"


def _cell(text: str) -> str:
    """A Markdown table cell: stage labels such as `04|unet-denoise-loop` hold a pipe,
    which would otherwise split the cell in two."""
    return str(text).replace("|", "\\|")


def to_markdown(r: dict) -> str:
    env = r["environment"]
    lines = [
        f"# fastsync profile: {r['mode']} mode",
        "",
        f"{env['device']}, torch {env['torch']}, fastsync {env['fastsync']}, {env['date']}",
        f"{r['frames']} frames; settings: {json.dumps(r['settings'])}",
        "",
        "| stage | seconds |",
        "|---|---:|",
    ]
    for name, value in r["stages"]["one_time"].items():
        lines.append(f"| one-time: {_cell(name)} | {value:.3f} |")
    for name, value in r["stages"]["steady"].items():
        lines.append(f"| {_cell(name)} | {value:.3f} |")
    lines += [
        f"| **job wall** | **{r['stages']['job_wall_s']:.3f}** |",
        "",
        f"- total CPU {r['total_cpu_s']:.2f} s, total CUDA {r['total_cuda_s']:.2f} s",
        f"- peak GPU memory: allocated {_gb(r['peak_memory_bytes']['allocated'])}, "
        f"reserved {_gb(r['peak_memory_bytes']['reserved'])}; host peak RSS {_gb(r['host_peak_rss_bytes'])}",
    ]
    if r["peak_memory_bytes"].get("one_time_allocated"):
        lines.append(f"- peak GPU memory of the load and warm-up: allocated "
                     f"{_gb(r['peak_memory_bytes']['one_time_allocated'])}")
    if r.get("quality"):
        q = r["quality"]
        lines.append(f"- quality vs reference output: PSNR {q['psnr_db']} dB, SSIM {q['ssim']} "
                     f"(mouth: PSNR {q.get('mouth_psnr_db')} dB, SSIM {q.get('mouth_ssim')}) over {q['frames']} frames")
    if r.get("verdict"):
        t = r["timeline"]
        lines += ["", "## Where the job waited", "", r["verdict"], "",
                  "| device busy | idle before the first chunk | between chunks | after the last |",
                  "|---:|---:|---:|---:|",
                  f"| {t['busy_s']:.2f} s | {t['idle_before_first_s']:.2f} s | {t['idle_between_s']:.2f} s "
                  f"| {t['idle_after_last_s']:.2f} s |"]
        if not env["device"].startswith("CPU"):
            lines += ["", "The profiler waits for the GPU at the end of each stage of the job's thread, so the "
                      "gaps here are somewhat longer than in a plain run."]
    lines += ["", f"## Top {TOP_OPS} ops", "", "| op | calls | self CPU s | self CUDA s |", "|---|---:|---:|---:|"]
    for op in r["top_ops"]:
        lines.append(f"| `{_cell(op['name'])}` | {op['calls']} | {op['self_cpu_s']:.4f} | {op['self_cuda_s']:.4f} |")
    for worker, ops in (r.get("host_top_ops") or {}).items():
        lines += ["", f"## Top {TOP_OPS} CPU ops of the {worker} process", "", "| op | calls | self CPU s |",
                  "|---|---:|---:|"]
        lines += [f"| `{_cell(op['name'])}` | {op['calls']} | {op['self_cpu_s']:.4f} |" for op in ops]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: Path) -> None:
    for name, text in (("report.json", json.dumps(report, indent=1)), ("report.md", to_markdown(report))):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out_dir / name)


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _output_of(report_path: Path, report: dict) -> Path:
    beside = Path(report_path).parent / "output.mp4"  # reports travel with their folder
    return beside if beside.exists() else Path(report["output"])


def compare_reports(path_a: Path, path_b: Path) -> str:
    """Side-by-side table; ratio = A / B (above 1 means B is faster). Quality of B's output vs A's."""
    a, b = (json.loads(Path(p).read_text()) for p in (path_a, path_b))
    lines = [f"| | A: {a['mode']} | B: {b['mode']} | A/B |", "|---|---:|---:|---:|"]
    for name in stages.ALL_STAGES[1:]:
        va, vb = a["stages"]["steady"].get(name, 0), b["stages"]["steady"].get(name, 0)
        lines.append(f"| {_cell(name)} | {va:.3f} | {vb:.3f} | {_ratio(va, vb)} |")
    for key in ("job_wall_s",):
        va, vb = a["stages"][key], b["stages"][key]
        lines.append(f"| **{key}** | **{va:.3f}** | **{vb:.3f}** | **{_ratio(va, vb)}** |")
    for key in ("busy_s", "idle_between_s"):  # reports from before 2026-12-06 have no timeline
        va, vb = (a.get("timeline") or {}).get(key), (b.get("timeline") or {}).get(key)
        if va is not None and vb is not None:
            lines.append(f"| device {key[:-2].replace('_', ' ')} (s) | {va:.3f} | {vb:.3f} | {_ratio(va, vb)} |")
    for name in sorted(set(a["stages"]["one_time"]) | set(b["stages"]["one_time"])):
        va, vb = a["stages"]["one_time"].get(name, 0), b["stages"]["one_time"].get(name, 0)
        lines.append(f"| one-time {_cell(name)} | {va:.3f} | {vb:.3f} | {_ratio(va, vb)} |")
    for key in ("allocated", "reserved"):
        va, vb = a["peak_memory_bytes"][key], b["peak_memory_bytes"][key]
        lines.append(f"| peak GPU {key} | {_gb(va)} | {_gb(vb)} | {_ratio(va, vb)} |")
    lines.append(f"| host peak RSS | {_gb(a['host_peak_rss_bytes'])} | {_gb(b['host_peak_rss_bytes'])} | "
                 f"{_ratio(a['host_peak_rss_bytes'], b['host_peak_rss_bytes'])} |")
    lines += ["", _compare_quality(path_a, a, path_b, b)]
    return "\n".join(lines)


def _compare_quality(path_a: Path, a: dict, path_b: Path, b: dict) -> str:
    """B's output against A's, measured on the two videos when both are at hand. Reports
    copied without their videos (e.g. into bench/results) fall back to the quality B's run
    measured itself, which is only valid when that run was given A's output."""
    from fastsync.tools.quality import compare_videos

    out_a, out_b = _output_of(path_a, a), _output_of(path_b, b)
    if out_a.exists() and out_b.exists():
        boxes_file = Path(path_a).parent / "mouth_boxes.json"
        boxes = json.loads(boxes_file.read_text()) if boxes_file.exists() else None
        q, source = compare_videos(out_a, out_b, boxes).as_dict(), "measured now"
    elif b.get("quality"):
        q, source = b["quality"], f"from B's report, measured against {b['quality'].get('against', 'its --reference-output')}"
    else:
        return f"Quality not measured: {out_a} or {out_b} is missing and B's report has no quality."
    mouth_psnr = q.get("mouth_psnr_db")
    return (f"B's output vs A's over {q['frames']} frames: PSNR {q['psnr_db']:.2f} dB, SSIM {q['ssim']:.4f}; "
            f"mouth region: PSNR {mouth_psnr if mouth_psnr is None else round(mouth_psnr, 2)} dB, "
            f"SSIM {q.get('mouth_ssim') if q.get('mouth_ssim') is None else round(q['mouth_ssim'], 4)} ({source})")
