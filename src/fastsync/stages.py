"""Named pipeline stages, timed and labelled for torch.profiler.

The labels are stable (the profiler's report and the docs refer to them). A stage may
be entered many times (once per chunk) and from worker threads; its seconds add up.
In fast mode stages overlap, so their sum can exceed the wall time: that overlap is
the point of the pipeline, and the report shows both.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch

INIT = "01|init-components"
ALIGN = "02|align-faces"
AUDIO = "03|audio-features"
DENOISE = "04|unet-denoise-loop"
RESTORE = "05|restore-faces"
WRITE = "06|write-video"
ALL_STAGES = (INIT, ALIGN, AUDIO, DENOISE, RESTORE, WRITE)


class StageClock:
    def __init__(self, sync_cuda: bool = False):
        # With sync_cuda the GPU is synchronised at stage exits so that GPU time is
        # charged to the stage that queued it (the profiler asks for this; runs don't).
        # Only on the thread that made the clock (the job's): worker threads (decode, detect,
        # paste, encode) queue no CUDA work, and a device-wide sync there would wait for the
        # denoiser's kernels and charge them to the worker's stage.
        self.sync_cuda = sync_cuda and torch.cuda.is_available()
        self._sync_thread = threading.get_ident()
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        with torch.profiler.record_function(name):
            try:
                yield
            finally:
                if self.sync_cuda and threading.get_ident() == self._sync_thread:
                    torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        with self._lock:
            self.seconds[name] += elapsed
            self.calls[name] += 1

    def add(self, seconds: dict[str, float]) -> None:
        """Add stage seconds measured elsewhere (a worker process's own clock)."""
        with self._lock:
            for name, value in seconds.items():
                self.seconds[name] += value
                self.calls[name] += 1

    def as_dict(self) -> dict[str, float]:
        return {name: round(self.seconds.get(name, 0.0), 4) for name in ALL_STAGES}
