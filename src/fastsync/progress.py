"""Progress bars, one per pipeline stage (tqdm), that can be switched off for tests and the API.

Stages run concurrently in fast mode, so each has its own bar: how far decoding and face
alignment, denoising, and paste-back + encoding have got, in frames.
"""

from __future__ import annotations

import sys
import threading

from tqdm import tqdm

BARS = (("faces", "align faces"), ("denoise", "denoise    "), ("write", "paste+write"))


class Progress:
    def __init__(self, total: int, *, enabled: bool = True):
        self._lock = threading.Lock()  # tqdm bars are updated from worker threads
        self._bars = {
            key: tqdm(total=total, desc=label, unit="frame", file=sys.stderr, position=i, leave=True,
                      disable=not enabled, dynamic_ncols=True)
            for i, (key, label) in enumerate(BARS)
        }

    def update(self, stage: str, n: int) -> None:
        with self._lock:
            self._bars[stage].update(n)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
