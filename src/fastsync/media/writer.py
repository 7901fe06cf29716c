"""Video output: H.264 + AAC, streamed to a temporary file and renamed into place on success.

What the reference produces, in one pass: its last step is
`ffmpeg -i video.mp4 -i audio.wav -c:v libx264 -crf 18 -c:a aac out.mp4`, where the wav holds
the 16 kHz mono audio cut to int(n_frames / 25 * 16000) samples. We encode the frames once
(libx264, crf 18, yuv420p, 25 fps) instead of twice. The AAC track is either that 16 kHz mono
audio or, by default, the audio file's own rate and channels (`fastsync.media.audio_track`),
cut at the same point in time.

A failed or interrupted job leaves nothing at the output path: frames go to a hidden
temporary file beside it, which `os.replace` moves onto the output only after the container
is finalised, and which is deleted on any exception.

Odd sizes: 4:2:0 chroma (yuv420p, what players accept) needs even width and height, and
H.264 cannot crop a single pixel from a 4:2:0 picture. A frame with an odd side is padded
by repeating its last column / row, so the file is at most one pixel wider / taller than
the input; a warning says so. `encoded_size` tells the size in advance.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tempfile
import weakref
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from fastsync.errors import InputError
from fastsync.media.audio_track import SamplesTrack, bit_rate
from fastsync.output import CRF

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

FPS = 25
SAMPLE_RATE = 16000

_LAYOUTS = {1: "mono", 2: "stereo"}  # an audio track's channels

# Output formats that can hold H.264 + AAC, by suffix.
_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
_OUTPUT_HINT = "choose an output path ending in .mp4 (or .mov / .mkv) inside a writable folder"


def check_output_writable(path: str | Path) -> Path:
    """Fail early, before any work, if the result could not be saved at `path`.

    Creates the parent folder when it is missing. Raises InputError naming the path when the
    path is a directory, has a suffix we cannot write, or its folder cannot be created or
    written to. Returns the path.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError("the output path is a directory", path, hint="name a file, e.g. out.mp4")
    if path.suffix.lower() not in _FORMATS:
        raise InputError(f"cannot write a video with suffix {path.suffix or '(none)'!r}", path,
                         hint=_OUTPUT_HINT)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {folder} ({exc.strerror or exc})", path,
                         hint=_OUTPUT_HINT) from exc
    # Write a probe file: os.access is fooled by root, read-only mounts and ACLs.
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise InputError(f"the output folder {folder} is not writable ({exc.strerror or exc})", path,
                         hint=_OUTPUT_HINT) from exc
    return path


def encoded_size(width: int, height: int) -> tuple[int, int]:
    """The size written for frames of `width` x `height` (odd sides grow by one pixel)."""
    return width + width % 2, height + height % 2


class VideoWriter:
    """Writes RGB uint8 (H, W, 3) frames, and optionally audio, to `path` as H.264 + AAC.

    Use as a context manager: on a clean exit the file is finalised and moved onto `path`;
    on an exception nothing is left behind. `audio` is float32 mono at `sample_rate`, or a
    track of `fastsync.media.audio_track` (its own rate and channels, read as needed); the
    track is cut to int(frames / fps * rate) samples, interleaved as frames arrive.
    Frames are encoded as they come: memory is the encoder's own look-ahead, not the video.
    """

    def __init__(self, path: str | Path, width: int, height: int, *, fps: int = FPS,
                 audio=None, sample_rate: int = SAMPLE_RATE, crf: int = CRF,
                 preset: str = "medium", threads: int = 0):
        self.path = check_output_writable(path)
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        self.width, self.height = width, height
        self.fps = fps
        self.frames_written = 0
        self._audio = SamplesTrack(audio, sample_rate) if isinstance(audio, np.ndarray) else audio
        self.sample_rate = sample_rate if self._audio is None else self._audio.rate
        self._audio_written = 0
        self._closed = False
        self._pad = encoded_size(width, height) != (width, height)
        if self._pad:
            log.warning("%s: %dx%d has an odd side; H.264 4:2:0 needs even sizes, writing %dx%d "
                        "(last column/row repeated)", self.path, width, height, *encoded_size(width, height))

        self._tmp = _create_hidden_sibling(self.path)
        self._cleanup = weakref.finalize(self, _unlink, self._tmp)
        if self._audio is not None:  # the track's file closes with the output, however it ends
            self._audio_closer = weakref.finalize(self, self._audio.close)
        try:
            self._open(crf, preset, threads)
        except BaseException:
            self._cleanup()
            raise

    def _open(self, crf: int, preset: str, threads: int) -> None:
        fmt = _FORMATS[self.path.suffix.lower()]
        self._container = av.open(str(self._tmp), mode="w", format=fmt)
        width, height = encoded_size(self.width, self.height)
        video = self._container.add_stream("libx264", rate=self.fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.time_base = Fraction(1, self.fps)
        video.options = {"crf": str(crf), "preset": preset}
        if threads:  # 0: libx264 picks (1.5 per core); 1 makes its output reproducible bit for bit
            video.options = {**video.options, "threads": str(threads)}
        self._video = video
        self._audio_stream = None
        if self._audio is not None:
            channels = self._audio.channels
            audio = self._container.add_stream("aac", rate=self.sample_rate, layout=_LAYOUTS[channels])
            audio.bit_rate = bit_rate(self.sample_rate, channels)
            audio.codec_context.time_base = Fraction(1, self.sample_rate)
            self._audio_stream = audio

    # -- writing ---------------------------------------------------------------------------------
    def write(self, frame: np.ndarray) -> None:
        """Encode one RGB uint8 frame of the size given at construction."""
        if self._closed:
            raise RuntimeError(f"{self.path}: write() after the writer was closed")
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"{self.path}: frame {self.frames_written} is {frame.dtype} {frame.shape}, "
                             f"expected uint8 ({self.height}, {self.width}, 3)")
        if self._pad:
            frame = np.pad(frame, ((0, self.height % 2), (0, self.width % 2), (0, 0)), mode="edge")
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        # Convert here so the RGB->YUV step is the one the ffmpeg CLI would use (bicubic swscale).
        picture = picture.reformat(format="yuv420p", interpolation="BICUBIC")
        picture.pts = self.frames_written
        picture.time_base = Fraction(1, self.fps)
        self._container.mux(self._video.encode(picture))
        self.frames_written += 1
        self._write_audio_until(self.frames_written)

    def _audio_target(self, n_frames: int) -> int:
        # Same float expression as the reference, so the cut lands on the same sample.
        return int(n_frames / self.fps * self.sample_rate)

    def _write_audio_until(self, n_frames: int) -> None:
        if self._audio_stream is None:
            return
        wanted = self._audio_target(n_frames) - self._audio_written
        if wanted <= 0:
            return
        chunk = self._audio.read(wanted)  # fewer at the end of a track shorter than the video
        if chunk.shape[1] == 0:
            return
        samples = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=_LAYOUTS[self._audio.channels])
        samples.sample_rate = self.sample_rate
        samples.pts = self._audio_written
        samples.time_base = Fraction(1, self.sample_rate)
        self._container.mux(self._audio_stream.encode(samples))
        self._audio_written += chunk.shape[1]

    # -- finishing -------------------------------------------------------------------------------
    def close(self) -> Path:
        """Flush the encoders, finalise the container and move it onto the output path."""
        if self._closed:
            return self.path
        self._closed = True
        try:
            if self.frames_written == 0:
                raise RuntimeError(f"{self.path}: no frames were written; refusing to save an empty video")
            self._container.mux(self._video.encode(None))
            if self._audio_stream is not None:
                self._container.mux(self._audio_stream.encode(None))
            self._container.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self._discard()
            raise
        self._cleanup.detach()
        self._close_audio()
        return self.path

    def abort(self) -> None:
        """Stop without saving: the temporary file is removed and the output path left untouched."""
        if not self._closed:
            self._closed = True
            self._discard()

    def _discard(self) -> None:
        with contextlib.suppress(Exception):  # the file goes anyway; the caller sees the first error
            self._container.close()
        self._cleanup()
        self._close_audio()

    def _close_audio(self) -> None:
        if self._audio is not None:
            self._audio_closer()

    @property
    def audio_samples_written(self) -> int:
        return self._audio_written

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _create_hidden_sibling(path: Path) -> Path:
    """An empty, new file beside `path`. Unlike mkstemp's 0600, it gets the usual
    permissions (0666 less the umask), which os.replace then carries to the output."""
    for _ in range(100):
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not create a temporary file beside {path}")


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
