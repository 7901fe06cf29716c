"""Audio decoding: any file with an audio track -> 16 kHz mono float32, via PyAV.

The reference pipes the file through the ffmpeg CLI as `-f s16le -ac 1 -ar 16000` and
divides the int16 samples by 32768. PyAV's `AudioResampler` drives the same libswresample
path (an `aformat` filter, as the CLI configures its output), so we ask it for packed s16
mono at the target rate and scale the integers the same way. Going through s16 on purpose
keeps the 16-bit quantisation the reference's features were computed from.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from fastsync.errors import InputError

SAMPLE_RATE = 16000  # Whisper's input rate
INT16_SCALE = 32768.0  # s16 full scale: samples land in [-1, 1)
# |x| below this everywhere is at most +-3 LSB of 16-bit audio: dither or a muted track.
SILENCE_THRESHOLD = 1e-4

_AUDIO_HINT = "pass an audio file (wav, mp3, m4a/aac, flac, ...) or a video that has an audio track"


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, allow_silent: bool = False) -> np.ndarray:
    """Decode the best audio stream of `path` to mono float32 at `sample_rate`, shape (n,).

    Raises InputError (naming the file) for a missing, empty or unreadable file, a file with
    no audio stream, a track that decodes to zero samples and, unless `allow_silent`, a
    silent track.
    """
    path = Path(path)
    pieces = _decode_s16_mono(path, sample_rate)  # checks the file first (open_audio)
    if not pieces or sum(p.size for p in pieces) == 0:
        raise InputError("the audio track decodes to zero samples", path, hint=_AUDIO_HINT)
    samples = np.concatenate(pieces).astype(np.float32)
    samples /= INT16_SCALE  # in place: one float32 copy of the track at a time, not two (exact: 2^15)
    if not allow_silent:
        check_not_silent(samples, path)
    return samples


def check_not_silent(samples: np.ndarray, path: str | Path | None = None) -> None:
    """Raise InputError when every sample is below SILENCE_THRESHOLD in magnitude."""
    peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
    if peak < SILENCE_THRESHOLD:
        raise InputError(
            f"the audio is silent (peak {peak:.1e}): nothing to lip-sync",
            path,
            hint="check that this is the right file and that its audio track is not muted",
        )


def audio_duration_s(audio: np.ndarray | str | Path, sample_rate: int = SAMPLE_RATE) -> float:
    """Duration in seconds of decoded samples, or of a file (decoded exactly, not guessed from headers)."""
    if isinstance(audio, (str, Path)):
        audio = load_audio(audio, sample_rate, allow_silent=True)
    return len(audio) / sample_rate


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError("file not found", path, hint="check the path and spelling")
    if not path.is_file():
        raise InputError("not a file", path, hint=_AUDIO_HINT)
    if path.stat().st_size == 0:
        raise InputError("the file is empty (0 bytes)", path, hint=_AUDIO_HINT)


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"not a readable audio or video file ({reason})", path, hint=_AUDIO_HINT) from exc


def open_audio(path: Path) -> tuple[av.container.InputContainer, av.audio.stream.AudioStream]:
    """The file, open, and its best audio stream: the one ffmpeg itself would pick
    (av_find_best_stream), as the reference's CLI call does. InputError names the file when
    it is missing, empty, unreadable or has no audio stream. The caller closes the container."""
    _check_file(path)
    container = _open(path)
    if not container.streams.audio:
        container.close()
        raise InputError("the file has no audio stream", path, hint=_AUDIO_HINT)
    return container, container.streams.best("audio")


def resampled(container, stream, path: Path, format: str, layout: str, rate: int) -> Iterator[np.ndarray]:
    """The stream decoded and resampled to `format`/`layout`/`rate`, as arrays in order
    (packed formats give (1, n * channels), planar ones (channels, n))."""
    resampler, source = None, None
    try:
        for frame in container.decode(stream):
            signature = (frame.format.name, frame.layout.name, frame.sample_rate)
            if signature != source:
                # The input format changed mid-stream (or this is the first frame): a resampler
                # is bound to one input format, so drain the old one and start afresh.
                if resampler is not None:
                    yield from (out.to_ndarray() for out in resampler.resample(None))
                resampler = av.AudioResampler(format=format, layout=layout, rate=rate)
                source = signature
            yield from (out.to_ndarray() for out in resampler.resample(frame))
        if resampler is not None:
            yield from (out.to_ndarray() for out in resampler.resample(None))
    except av.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"could not decode the audio stream ({reason})", path, hint=_AUDIO_HINT) from exc


def _decode_s16_mono(path: Path, sample_rate: int) -> list[np.ndarray]:
    """Decode and resample to packed int16 mono; returns the int16 pieces in order."""
    container, stream = open_audio(path)
    with container:
        return [piece.reshape(-1) for piece in resampled(container, stream, path, "s16", "mono", sample_rate)]
