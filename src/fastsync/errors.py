"""Errors that tell the user what went wrong, where, and what to do."""

from __future__ import annotations

from pathlib import Path


class FastsyncError(Exception):
    """Base class: every message names the file (when there is one) and the fix."""

    def __init__(self, message: str, path: str | Path | None = None, hint: str | None = None):
        self.path = None if path is None else Path(path)
        self.hint = hint
        text = f"{self.path}: {message}" if self.path is not None else message
        if hint:
            text += f"\n  hint: {hint}"
        super().__init__(text)


class InputError(FastsyncError):
    """A user-provided file is missing, unreadable or unusable."""


class CheckpointError(FastsyncError):
    """A checkpoint is missing or does not match the expected layout."""


class NoFaceError(InputError):
    """No face could be found in any frame of the input video."""
