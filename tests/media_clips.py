"""Tiny synthetic clips for the media tests: every frame carries its own index.

The index is written as bars (bit b set -> bar b white), wide enough to survive lossy
coding, so a test can tell exactly which source frame ended up at each output position.
"""

from __future__ import annotations

import itertools
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BITS = 10  # up to 1024 distinct frames
WIDTH, HEIGHT = 80, 48  # 8-pixel bars, even sizes for 4:2:0


def frame_for(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    img = np.zeros((height, width, 3), np.uint8)
    bar = width // BITS
    for b in range(BITS):
        if (index >> b) & 1:
            img[:, b * bar:(b + 1) * bar] = 255
    img[: height // 8, : width // 8] = (255, 0, 0)  # a red corner, to check orientation
    return img


def index_of(img: np.ndarray) -> int:
    """Inverse of `frame_for`, for an upright frame of the same size."""
    height, width = img.shape[:2]
    bar = width // BITS
    row = img[height // 2]
    return sum(1 << b for b in range(BITS) if row[b * bar + bar // 2].mean() > 128)


def times_at(fps: Fraction | int, n: int, start: Fraction = Fraction(0)) -> list[Fraction]:
    return [start + Fraction(i) / Fraction(fps) for i in range(n)]


def make_clip(path: Path, times: list[Fraction], *, codec: str = "libx264", time_base=Fraction(1, 1000),
              width: int = WIDTH, height: int = HEIGHT, audio_seconds: float = 0.0,
              options: dict | None = None) -> Path:
    """Encode frames 0..len(times)-1, shown at `times` (seconds), into `path`.

    Packet durations are set from the gaps between frames (the last one repeats the gap
    before it), as a camera or an editor would write them.
    """
    pts = [round(Fraction(t) / time_base) for t in times]
    gaps = [b - a for a, b in itertools.pairwise(pts)] or [round(Fraction(1, 25) / time_base)]
    durations = dict(zip(pts, gaps + [gaps[-1]]))
    rate = round(1 / (Fraction(times[1] - times[0]) if len(times) > 1 else Fraction(1, 25)))
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=max(1, rate))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        stream.options = options if options is not None else _default_options(codec)
        sound = None
        if audio_seconds:
            sound = container.add_stream("aac", rate=16000, layout="mono")

        def mux(packets):
            for packet in packets:
                packet.duration = durations.get(packet.pts, gaps[-1])
                container.mux(packet)

        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(frame_for(i, width, height), format="rgb24")
            frame.pts, frame.time_base = p, time_base
            mux(stream.encode(frame))
        mux(stream.encode(None))
        if sound is not None:
            samples = np.zeros((1, int(audio_seconds * 16000)), np.float32)
            chunk = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = 16000, 0, Fraction(1, 16000)
            container.mux(sound.encode(chunk))
            container.mux(sound.encode(None))
    return path


def _default_options(codec: str) -> dict:
    if codec == "libx264":
        return {"crf": "10", "preset": "ultrafast"}
    if codec == "libvpx-vp9":
        return {"crf": "10", "b": "0", "deadline": "realtime", "cpu-used": "8"}
    return {}


def set_display_rotation(path: Path, quarter_turns_cw: int) -> None:
    """Patch the mp4 track header's matrix so players turn the picture clockwise by
    90 * `quarter_turns_cw` degrees (what a phone writes for a portrait recording)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    assert at > 0, "no track header"
    version = data[at + 4]
    # size/type, version+flags, times + track id + reserved + duration, reserved, layer..volume
    matrix_at = at + 4 + 4 + (32 if version == 1 else 20) + 8 + 8
    cos, sin = {0: (1, 0), 1: (0, 1), 2: (-1, 0), 3: (0, -1)}[quarter_turns_cw % 4]
    fixed = [cos << 16, sin << 16, 0, -sin << 16, cos << 16, 0, 0, 0, 1 << 30]
    data[matrix_at:matrix_at + 36] = struct.pack(">9I", *(v & 0xFFFFFFFF for v in fixed))
    path.write_bytes(bytes(data))
