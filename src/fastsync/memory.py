"""When the model's device runs out of memory: an error that says what to do, not a traceback.

PyTorch's `OutOfMemoryError` names the allocation that failed, in MiB, inside a traceback
of model code. A user needs to know which device filled up, how much it has, what a job
needs and what to change. `DeviceMemoryError` is a `FastsyncError`, so the command line
prints it as one line and exits 2, a batch reports the job as failed and goes on to the
next, and the web UI shows it on the page. The failed call's memory is handed back to the
device first (its frames are cleared, then the allocator's cache), so that the next job
finds the device as the engine left it.
"""

from __future__ import annotations

import contextlib
import gc
import traceback

import torch

from fastsync.errors import FastsyncError

# Peak GPU memory of a demo1 job at 512 px on an H100 (bench/results/h100.json): allocated
# by tensors, and reserved by PyTorch's allocator (what other programs cannot use).
NEEDS_GB = {"fast": (4.7, 9.9), "reference": (13.1, 19.4)}


class DeviceMemoryError(FastsyncError):
    """The model's device ran out of memory while loading, warming up or running a job."""


@contextlib.contextmanager
def device_memory_errors(device: torch.device, mode: str, doing: str):
    """Turn an out-of-memory error on `device` inside the block into a DeviceMemoryError.
    `mode`: "fast" or "reference"; `doing`: what was happening ("running the job")."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        traceback.clear_frames(exc.__traceback__)  # their tensors are what filled the device
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise DeviceMemoryError(_message(device, doing), hint=_hint(device, mode)) from exc


def _message(device: torch.device, doing: str) -> str:
    text = f"{device} ran out of memory while {doing}"
    if device.type == "cuda" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(device)
        name = torch.cuda.get_device_name(device)
        text += f" ({name}: {total / 1e9:.1f} GB in all, {free / 1e9:.1f} GB free now)"
    return text


def _hint(device: torch.device, mode: str) -> str:
    allocated, reserved = NEEDS_GB.get(mode, NEEDS_GB["fast"])
    text = (f"a 512 px job (--version 1.6) in {mode} mode needs about {allocated:.0f} GB of GPU memory "
            f"({reserved:.0f} GB held by PyTorch); close other programs on this GPU")
    if device.type == "cuda":
        text += ", choose another with --device cuda:N"
    text += ", or use --version 1.5 (256 px)"
    if mode == "reference":
        text += " or --mode fast, which needs far less"
    return text
