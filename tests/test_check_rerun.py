"""bench.check_rerun lists exactly the frames of two videos whose decoded pixels differ."""

from __future__ import annotations

from fractions import Fraction

import av

from bench.check_rerun import frame_differences
from media_clips import frame_for


def _write(path, frames):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.time_base = Fraction(1, 25)
        stream.options = {"crf": "0"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_only_the_changed_frame_is_listed(tmp_path):
    frames = [frame_for(i) for i in range(6)]
    changed = [f.copy() for f in frames]
    changed[3][20:30, 40:60] = 128  # a grey patch in frame 3 only
    a = _write(tmp_path / "a.mp4", frames)
    b = _write(tmp_path / "b.mp4", frames)
    c = _write(tmp_path / "c.mp4", changed)

    assert frame_differences(a, b) == []
    differing = frame_differences(a, c)
    assert [d["frame"] for d in differing] == [3]
    assert differing[0]["pixels"] > 0 and differing[0]["max"] > 50
