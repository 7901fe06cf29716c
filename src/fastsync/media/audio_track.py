"""The output file's audio track: where its samples come from, read as the frames go out.

The reference muxes the 16 kHz mono wav that its audio features were computed from, so a
48 kHz stereo voice-over comes back as telephone-band mono. That stays available
(`OutputOptions(audio="reference")`, `--output-audio reference`), but by default the output carries the audio file's own
track: its sample rate (AAC's rates, at most 48 kHz) and channels (mono or stereo; more
channels are downmixed to stereo). Either way the track is cut where the reference cuts it,
at int(frames / fps * rate) samples.

A `FileTrack` decodes the file as the writer asks for samples, so a ten-minute 48 kHz stereo
track is never held whole (230 MB as float32): host memory stays flat, as for the frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastsync.media.audio import open_audio, resampled
from fastsync.output import AUDIO_CHOICES

MAX_RATE = 48000  # above this nothing is audible; higher rates are resampled to it
# The native AAC encoder's sample rates (av.codec.Codec("aac", "w").audio_rates).
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
# A channel's bit rate: 4 bits a sample (64 kb/s at the reference's 16 kHz, as before), at
# most 96 kb/s (transparent for speech and most music with AAC-LC).
BITS_PER_SAMPLE, MAX_CHANNEL_BIT_RATE = 4, 96_000


def output_rate(rate: int) -> int:
    """The rate a source at `rate` is written at: its own when AAC takes it, else the
    nearest AAC rate above it (nothing is lost), never above MAX_RATE."""
    if rate >= MAX_RATE:
        return MAX_RATE
    return min(r for r in AAC_RATES if r >= rate)


def bit_rate(rate: int, channels: int) -> int:
    return channels * min(BITS_PER_SAMPLE * rate, MAX_CHANNEL_BIT_RATE)


class SamplesTrack:
    """Mono float32 samples already in memory (the reference's 16 kHz track)."""

    channels = 1

    def __init__(self, samples: np.ndarray, rate: int):
        self.samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        self.rate = rate
        self._at = 0

    def read(self, n: int) -> np.ndarray:
        """Up to `n` more samples, shape (1, m); fewer at the end of the track."""
        piece = self.samples[self._at:self._at + n]
        self._at += piece.size
        return piece[None, :]

    def close(self) -> None:
        pass


class FileTrack:
    """The best audio stream of a file (the one ffmpeg would pick), decoded and resampled
    to float planar at `output_rate` as it is read; mono stays mono, the rest is stereo."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._container, stream = open_audio(self.path)  # InputError naming the file
        self.channels = 1 if stream.codec_context.channels == 1 else 2
        self.rate = output_rate(stream.codec_context.sample_rate or stream.sample_rate)
        layout = "mono" if self.channels == 1 else "stereo"
        self._pieces = resampled(self._container, stream, self.path, "fltp", layout, self.rate)
        self._pending: list[np.ndarray] = []  # planar (channels, m) pieces not yet read
        self._buffered = 0
        self._ended = False

    def read(self, n: int) -> np.ndarray:
        """Up to `n` more samples, shape (channels, m); fewer at the end of the track."""
        while self._buffered < n and not self._ended:
            piece = next(self._pieces, None)
            if piece is None:
                self._ended = True
            else:
                self._pending.append(piece)
                self._buffered += piece.shape[1]
        if not self._pending:
            return np.zeros((self.channels, 0), np.float32)
        joined = np.concatenate(self._pending, axis=1)
        piece, rest = joined[:, :n], joined[:, n:]
        self._pending = [rest] if rest.shape[1] else []
        self._buffered = rest.shape[1]
        return np.ascontiguousarray(piece, dtype=np.float32)

    def close(self) -> None:
        self._container.close()


def job_audio_track(kind: str, path: str | Path, samples: np.ndarray, samples_rate: int):
    """The track a job writes: the file's own (`"source"`) or the 16 kHz mono `samples` that
    the features were computed from (`"reference"`)."""
    if kind == "reference":
        return SamplesTrack(samples, samples_rate)
    if kind == "source":
        return FileTrack(path)
    raise ValueError(f"unknown output audio {kind!r}; choose one of {', '.join(AUDIO_CHOICES)}")
