"""Memory stays flat as the video grows: decode -> (loop) -> encode streams frame by frame.

Each measurement runs in a fresh interpreter and reports its peak resident set size
(`ru_maxrss`), so the numbers are not polluted by the test process or by each other.
Holding the clip would cost 640 * 360 * 3 bytes = 0.69 MB per frame: 1.4 GB for the long one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np

SIZE = (640, 360)
SHORT_S, LONG_S = 20, 80
MARGIN_MB = 60

_MEASURE = r"""
import json, resource, sys
from fastsync.media.video import FrameSource
from fastsync.media.writer import VideoWriter
src, dst, n_out, w, h = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
source = FrameSource(src, n_out, spill_dir=sys.argv[6])
with VideoWriter(dst, w, h, preset="ultrafast") as writer:
    for _, frame in source:
        writer.write(frame)
print(json.dumps({"frames": writer.frames_written, "spilled": source.spilled,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _make_clip(path, seconds: int) -> None:
    """A 25 fps 640x360 clip whose content changes every frame (cheap to make, real to decode)."""
    width, height = SIZE
    base = np.zeros((height, width * 2, 3), np.uint8)
    base[:, :, 0] = np.linspace(0, 255, width * 2)[None, :]
    base[:, :, 1] = np.linspace(0, 255, height)[:, None]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "30"}
        for i in range(seconds * 25):
            shift = (i * 7) % width
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, shift:shift + width]), "rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _peak(tmp_path, clip, n_out: int) -> dict:
    spill = tmp_path / "spill"
    spill.mkdir(exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(clip), str(tmp_path / "out.mp4"), str(n_out), *map(str, SIZE),
         str(spill)],
        capture_output=True, text=True, timeout=120, check=True)
    assert list(spill.iterdir()) == [], "the spill file was not removed"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_length(tmp_path):
    short, long = tmp_path / "short.mp4", tmp_path / "long.mp4"
    _make_clip(short, SHORT_S)
    _make_clip(long, LONG_S)

    # The short clip is looped ping-pong to the long clip's length: the spill path, too.
    n_long = LONG_S * 25
    looped = _peak(tmp_path, short, n_long)
    streamed_short = _peak(tmp_path, short, SHORT_S * 25)
    streamed_long = _peak(tmp_path, long, n_long)

    assert looped["spilled"] and not streamed_short["spilled"] and not streamed_long["spilled"]
    assert looped["frames"] == streamed_long["frames"] == n_long
    print(f"peak RSS MB: short {streamed_short['peak_mb']:.0f}, long {streamed_long['peak_mb']:.0f}, "
          f"short looped to long {looped['peak_mb']:.0f}")
    assert streamed_long["peak_mb"] < streamed_short["peak_mb"] + MARGIN_MB
    assert looped["peak_mb"] < streamed_short["peak_mb"] + MARGIN_MB
