"""`--devices`: the list of devices a batch runs on, one worker process each.

Checked in full before any worker starts or any model loads, so a typo costs nothing.
GPUs are named `cuda:N` (or `all`); `cpu` may repeat, since a many-core CPU can host
several workers, but a GPU may not: two engines on one GPU only split its memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from fastsync.errors import FastsyncError

USAGE = "use --devices cuda:0,cuda:1 (GPUs), --devices all (every visible GPU) or --devices cpu,cpu (CPU workers)"


def parse_devices(spec: str | Sequence[str]) -> list[str]:
    """'cuda:0,cuda:1' / 'all' / 'cpu,cpu', or a list of names -> checked, normalised names."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [name.strip() for name in names]
    if names == ["all"]:
        return _all_gpus()
    if not names or "" in names:
        raise FastsyncError(f"--devices {_show(spec)} has an empty entry", hint=USAGE)
    devices = [_one_device(name) for name in names]
    _check_one_kind(devices)
    _check_no_repeated_gpu(devices)
    return devices


def _all_gpus() -> list[str]:
    count = _gpu_count()
    if count == 0:
        raise FastsyncError("--devices all found no CUDA GPU here",
                            hint="check CUDA_VISIBLE_DEVICES and the driver, or use --devices cpu,cpu for CPU workers")
    return [f"cuda:{index}" for index in range(count)]


def _one_device(name: str) -> str:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise FastsyncError(f"--devices: unknown device {name!r}", hint=USAGE) from None
    if device.type == "cpu":
        return "cpu"
    if device.type != "cuda":
        raise FastsyncError(f"--devices: {name!r} is not supported; a batch runs on CUDA GPUs or CPUs", hint=USAGE)
    count = _gpu_count()
    if count == 0:
        raise FastsyncError(f"--devices asks for {name} but CUDA is not available here",
                            hint="run on a machine with NVIDIA GPUs, or use --devices cpu,cpu for CPU workers")
    index = 0 if device.index is None else device.index  # a bare 'cuda' is torch's default, GPU 0
    if index >= count:
        raise FastsyncError(f"--devices: {name} is out of range; {count} GPU(s) are visible here",
                            hint=f"use indices 0 to {count - 1}, or --devices all")
    return f"cuda:{index}"


def _check_one_kind(devices: list[str]) -> None:
    # The host stages' choice (processes on a GPU, threads on a CPU) is made once for the
    # whole batch, and a CPU worker beside GPUs would only hold up the batch's last jobs.
    if "cpu" in devices and len(set(devices)) > 1:
        raise FastsyncError(f"--devices {','.join(devices)} mixes CPU and GPU workers",
                            hint="list only GPUs (cuda:0,cuda:1) or only CPU workers (cpu,cpu)")


def _check_no_repeated_gpu(devices: list[str]) -> None:
    seen = set()
    for device in devices:
        if device != "cpu" and device in seen:
            raise FastsyncError(f"--devices lists {device} twice",
                                hint="list each GPU once: one worker per GPU, each with its own engine")
        seen.add(device)


def _gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _show(spec: str | Sequence[str]) -> str:
    return spec if isinstance(spec, str) else ",".join(spec)


def make_current(device: str | torch.device) -> None:
    """Make a GPU the current one, so that what names no device (CUDA streams, events and
    graphs, pinned host memory) lands on it and not on GPU 0. A bare "cuda" names no GPU:
    it already means the current one, and torch.cuda.set_device refuses it."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def device_labels(devices: list[str]) -> list[str]:
    """Names for messages: a CPU listed several times gets #k."""
    return [f"{d}#{devices[:i].count(d)}" if devices.count(d) > 1 else d for i, d in enumerate(devices)]


def cpu_share(devices: list[str]) -> int:
    """Intra-op threads per CPU worker: an equal share of the cores, as each worker's torch
    would otherwise start one thread per core and the workers would fight over them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, devices.count("cpu")))
