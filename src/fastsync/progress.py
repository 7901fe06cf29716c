"""Progress bars (tqdm) that can be switched off for tests, the API and the web UI."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, description: str, *, enabled: bool = True):
        self._bar = tqdm(total=total, desc=description, unit="frame", file=sys.stderr,
                         disable=not enabled, dynamic_ncols=True)

    def update(self, n: int) -> None:
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()
