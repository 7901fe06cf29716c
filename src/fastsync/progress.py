"""Progress bars, one per pipeline stage (tqdm), that can be switched off for tests and the API.

Stages run concurrently in fast mode, so each has its own bar: how far decoding and face
alignment, denoising, and paste-back + encoding have got, in frames. An `on_update`
callback sees the same counts, for front-ends that draw their own bar (the web UI).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from tqdm import tqdm

BARS = (("faces", "align faces"), ("denoise", "denoise    "), ("write", "paste+write"))

# (stage key from BARS, frames that stage has done, frames in the job)
ProgressCallback = Callable[[str, int, int], None]


class Progress:
    def __init__(self, total: int, *, enabled: bool = True, on_update: ProgressCallback | None = None):
        self._lock = threading.Lock()  # tqdm bars are updated from worker threads
        self.total = total
        self._on_update = on_update
        self._done = {key: 0 for key, _ in BARS}
        self._bars = {
            key: tqdm(total=total, desc=label, unit="frame", file=sys.stderr, position=i, leave=True,
                      disable=not enabled, dynamic_ncols=True)
            for i, (key, label) in enumerate(BARS)
        }

    def update(self, stage: str, n: int) -> None:
        with self._lock:
            self._bars[stage].update(n)
            self._done[stage] += n
            if self._on_update is not None:  # under the lock, so each stage's counts arrive in order
                self._on_update(stage, self._done[stage], self.total)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
