"""Host <-> GPU copies that do not stall the thread queuing GPU work.

A plain `.to("cuda")` from pageable memory, or `.cpu()`, waits until every kernel queued
before it has run. In the pipeline that wait falls on the denoising thread, between one
chunk and the next, so the GPU idles while the thread catches up. Going through pinned
(page-locked) host memory makes both copies asynchronous; a CUDA event tells the reader
when a device-to-host copy has landed. On CPU both are plain pass-throughs.
"""

from __future__ import annotations

import numpy as np
import torch


def upload(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor` on `device`, queued without blocking the calling thread."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    if not tensor.is_pinned():
        tensor = tensor.pin_memory()  # the copy below may still be reading it: the caching
        # host allocator keeps the block until that copy's stream has passed it
    return tensor.to(device, non_blocking=True)


class Download:
    """A device tensor on its way to host memory; `.numpy()` waits for it to land."""

    def __init__(self, tensor: torch.Tensor):
        self._ready: torch.cuda.Event | None = None
        if tensor.device.type == "cuda":
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
            tensor = host
        self._host = tensor

    def numpy(self) -> np.ndarray:
        if self._ready is not None:
            self._ready.synchronize()
        return self._host.numpy()


class LaunchThrottle:
    """Keeps the thread that queues GPU work at most `depth` marks ahead of the GPU.

    A thread queuing kernels far faster than the GPU runs them fills CUDA's launch queue;
    each further launch then blocks inside the driver *holding the GIL*, so the decoding,
    warping and encoding threads of fast mode stall with it. Waiting on a CUDA event
    instead releases the GIL. Call `mark()` after each unit of work (a denoising step, a
    VAE micro-batch); 0 or a CPU device disables it.
    """

    def __init__(self, device: torch.device | str, depth: int):
        self.enabled = depth > 0 and torch.device(device).type == "cuda"
        self.depth = depth
        self._pending: list[torch.cuda.Event] = []

    def mark(self) -> None:
        if not self.enabled:
            return
        event = torch.cuda.Event()
        event.record()
        self._pending.append(event)
        while len(self._pending) > self.depth:
            self._pending.pop(0).synchronize()  # releases the GIL while it waits
