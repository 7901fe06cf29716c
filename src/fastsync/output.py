"""How a job's file is encoded, in either mode: its audio track and the video's quality.

Kept apart from fastsync.engine so that the host worker processes, which write the file,
import it without the engine's imports.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastsync.errors import FastsyncError

AUDIO_CHOICES = ("source", "reference")
CRF = 18  # the reference's final encode


@dataclass(frozen=True)
class OutputOptions:
    """How a job's file is encoded (fastsync.media.writer), in either mode."""

    # "source" = the audio file's own rate and channels (up to 48 kHz stereo); "reference" =
    # the 16 kHz mono the features were computed from, as the reference muxes it
    # (fastsync.media.audio_track).
    audio: str = "source"
    crf: int = CRF  # libx264's constant rate factor: the reference's 18; lower is larger and closer

    def __post_init__(self):
        if self.audio not in AUDIO_CHOICES:
            raise FastsyncError(f"unknown output audio {self.audio!r}; choose source or reference")
        if not 0 <= self.crf <= 51:
            raise FastsyncError(f"--crf {self.crf} is out of range", hint="libx264 takes 0 (lossless) to 51")
