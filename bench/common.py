"""Shared helpers for the GPU benchmarks: timing with CUDA events, environment record."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

UNET_FORWARD_TFLOP = 35.25  # one CFG pair x 16 frames at 512 px (REFERENCE.md)


def cuda_time(fn, *, warmup: int = 3, repeat: int = 10) -> dict:
    """Median/min seconds of fn() measured with CUDA events (after warm-up)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeat": repeat}


def wall(fn) -> tuple[object, float]:
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - started


def environment() -> dict:
    info = {"cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), sm_count=props.multi_processor_count,
                    memory_gb=round(props.total_memory / 1e9, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def save(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


def run_child(module: str, child_args: list[str], env: dict | None = None) -> dict:
    """`python -m module --child *child_args` in a fresh process: its last JSON line (or the
    end of its stderr, under "error"), with the process's wall time and the clock time it
    was started at (`spawned_at`, time.time(): a child can report when it got somewhere)."""
    spawned_at = time.time()
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", module, "--child", *child_args], env=env, capture_output=True,
                          text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    entry = json.loads(lines[-1]) if lines else {"error": proc.stderr[-2000:]}
    entry["process_wall_s"] = round(time.perf_counter() - started, 2)
    entry["spawned_at"] = spawned_at
    return entry
