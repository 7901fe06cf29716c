"""Inputs and independent checks for the end-to-end tests (CLI, API, checkpoints).

Inputs are cut from the shared demo assets and kept short: a job's cost is its frame
count. Outputs are read back with PyAV, not with fastsync's own readers, wherever the
point of the check is what a player would see.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from media_clips import frame_for, index_of

# Every CLI job in the tests: tiny random models on the CPU.
TINY = ["--random-weights", "--model-size", "tiny", "--device", "cpu"]
# Two DDIM steps instead of 20: the pipeline around the UNet is what these tests check.
QUICK = ["--steps", "2"]

SAMPLE_RATE = 16_000
HOP = 160  # whisper's mel hop: 100 mel frames per second
STAMP_W, STAMP_H = 160, 48  # frame-index bars in the top-left corner, far from the face


# -- audio --------------------------------------------------------------------------------------


def trim_wav(src: Path, dst: Path, seconds: float) -> Path:
    """The first `seconds` of a wav, same format (the `wave` module: no decoder involved)."""
    with wave.open(str(src)) as r:
        params = r.getparams()
        data = r.readframes(int(round(seconds * r.getframerate())))
    with wave.open(str(dst), "wb") as w:
        w.setparams(params)
        w.writeframes(data)
    return dst


def write_wav(dst: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    """int16 mono samples -> 16-bit PCM wav."""
    with wave.open(str(dst), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype=np.int16).tobytes())
    return dst


def wav_samples(path: Path) -> int:
    with wave.open(str(path)) as r:
        assert (r.getframerate(), r.getnchannels()) == (SAMPLE_RATE, 1), "test wavs are 16 kHz mono"
        return r.getnframes()


def expected_frames(num_samples: int) -> int:
    """Output frames for a 16 kHz track, from REFERENCE.md alone.

    Whisper's mel has one frame per hop (the STFT's last frame is dropped), the encoder
    halves that: T = (n // 160) // 2 features at 50/s. Frames i = 0, 1, ... are produced
    and the loop stops after the first i with int(i * 50 / 25) > T.
    """
    features = (num_samples // HOP) // 2
    i = 0
    while int(i * 50 / 25) <= features:
        i += 1
    return i + 1


# -- video in -----------------------------------------------------------------------------------


def source_frames(path: Path, count: int, size: tuple[int, int] | None = None,
                  crop: tuple[int, int, int, int] | None = None) -> list[np.ndarray]:
    """The first `count` decoded frames (RGB), optionally cropped (x0, y0, x1, y1), then
    resized to `size` (w, h)."""
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            if crop is not None:
                x0, y0, x1, y1 = crop
                rgb = rgb[y0:y1, x0:x1]
            if size is not None:
                rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            frames.append(np.ascontiguousarray(rgb))
            if len(frames) == count:
                break
    assert len(frames) == count, f"{path} has fewer than {count} frames"
    return frames


def write_clip(dst: Path, frames: list[np.ndarray], fps: int = 25, crf: int = 12) -> Path:
    """Frames -> H.264 mp4 at `fps`, nearly lossless (crf 12; 0 is lossless, so equal frames encode alike)."""
    height, width = frames[0].shape[:2]
    with av.open(str(dst), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "ultrafast"}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return dst


def stamp(frame: np.ndarray, index: int) -> np.ndarray:
    """Write `index` as bars into the top-left corner (see media_clips.frame_for)."""
    out = frame.copy()
    out[:STAMP_H, :STAMP_W] = frame_for(index, STAMP_W, STAMP_H)
    return out


def read_stamp(frame: np.ndarray) -> int:
    return index_of(frame[:STAMP_H, :STAMP_W])


# -- video out ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Written:
    video_codec: str
    audio_codec: str | None
    width: int
    height: int
    fps: Fraction
    frames: int  # decoded, not the header's count
    audio_seconds: float | None  # decoded samples / rate
    sample_rate: int | None


def inspect(path: Path) -> Written:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        frames = sum(1 for _ in container.decode(video))
        codec = video.codec_context.name
        width, height, fps = video.width, video.height, video.average_rate
    audio_seconds = sample_rate = audio_codec = None
    if audio is not None:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            audio_codec, sample_rate = stream.codec_context.name, stream.sample_rate
            samples = sum(f.samples for f in container.decode(stream))
        audio_seconds = samples / sample_rate
    return Written(codec, audio_codec, width, height, fps, frames, audio_seconds, sample_rate)


def decode_rgb(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel mean absolute difference over the channels, (H, W) float."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=2)


def mouth_and_outside(box: tuple[float, float, float, float], shape: tuple[int, ...]):
    """Masks for the lower middle of a face box (the mouth) and for everything farther than
    one box size from it (the frame outside the face, which paste-back must not touch)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    w, h = x1 - x0, y1 - y0
    mouth = np.zeros(shape[:2], bool)
    mouth[y0 + int(0.65 * h):y1, x0 + w // 4:x1 - w // 4] = True
    outside = np.ones(shape[:2], bool)
    outside[max(0, y0 - h):y1 + h, max(0, x0 - w):x1 + w] = False
    return mouth, outside


# -- comparing encoded outputs ------------------------------------------------------------------
# libx264 in PyAV 15.1 read memory it never wrote on some machines (tests/test_media_writer.py,
# the test on fresh processes): a file encoded in a long-lived process can differ from a fresh process's in
# the bottom-right 16x8 pixels of a 360-wide frame (it ends in half a macroblock), by at most
# 4 levels (measured in tests/test_batch_devices.py). Nothing else may differ.
X264_CORNER = (16, 8)  # rows, columns
X264_CORNER_LEVELS = 4


def assert_same_frames_but_x264_corner(a: np.ndarray, b: np.ndarray) -> None:
    """(N, H, W, 3) frames: equal everywhere, and within the known fault's bound in the corner."""
    assert a.shape == b.shape, (a.shape, b.shape)
    rows, cols = X264_CORNER
    outside = np.ones(a.shape[1:3], bool)
    outside[-rows:, -cols:] = False
    assert np.array_equal(a[:, outside], b[:, outside]), "frames differ outside the encoder's corner macroblock"
    corner = np.abs(a[:, -rows:, -cols:].astype(int) - b[:, -rows:, -cols:])
    assert corner.max() <= X264_CORNER_LEVELS, f"corner differs by {corner.max()} levels"
