"""Files written whole or not at all: a reader sees the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_atomically(path: str | Path, data: bytes | str) -> Path:
    """Write `data` to a hidden file beside `path` and move it into place. Its name is unique
    to this call, so two processes writing one path do not mix their bytes; the last to
    finish wins. On any failure the partial file is removed and `path` is left as it was."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        if isinstance(data, str):
            partial.write_text(data, encoding="utf-8")
        else:
            partial.write_bytes(data)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise
    return path
