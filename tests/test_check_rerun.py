"""bench.check_rerun lists exactly the frames of two videos whose decoded pixels differ."""

from __future__ import annotations

from bench.check_rerun import frame_differences
from job_clips import write_clip
from media_clips import frame_for


def test_only_the_changed_frame_is_listed(tmp_path):
    frames = [frame_for(i) for i in range(6)]
    changed = [f.copy() for f in frames]
    changed[3][20:30, 40:60] = 128  # a grey patch in frame 3 only
    a = write_clip(tmp_path / "a.mp4", frames, crf=0)
    b = write_clip(tmp_path / "b.mp4", frames, crf=0)
    c = write_clip(tmp_path / "c.mp4", changed, crf=0)

    assert frame_differences(a, b) == []
    differing = frame_differences(a, c)
    assert [d["frame"] for d in differing] == [3]
    assert differing[0]["pixels"] > 0 and differing[0]["max"] > 50
