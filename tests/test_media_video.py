"""Video input: probing, 25 fps resampling as `ffmpeg -r 25` does it, rotation, ping-pong.

The expected frame lists below were recorded by running the real ffmpeg CLI (9.0.2, the
build that the imageio-ffmpeg 0.8.1 wheel ships) as the reference does,
`ffmpeg -i clip -r 25 -crf 18 out.mp4`, on the same synthetic clips, and reading back which
source frame landed at each output position.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from media_clips import HEIGHT, WIDTH, index_of, make_clip, set_display_rotation, times_at

from fastsync.errors import InputError
from fastsync.media.video import (
    FrameSource,
    count_frames_25fps,
    iter_frames_25fps,
    pingpong_index,
    probe_video,
)

VFR_GAPS_MS = (40, 33, 33, 100, 20, 67, 40, 150, 33, 45, 10, 50, 300, 40)


def _vfr_times(n: int) -> list[Fraction]:
    t, times = Fraction(0), []
    for i in range(n):
        times.append(t)
        t += Fraction(VFR_GAPS_MS[i % len(VFR_GAPS_MS)], 1000)
    return times


# 30 -> 25 fps: the CLI lets the output lag ~2 frames before it starts dropping one in six.
FFMPEG_30FPS = [*range(12), *(i for i in range(13, 72) if i % 6 != 0)]
CASES = {
    "fps30.mp4": ({"times": times_at(30, 72)}, FFMPEG_30FPS),
    "fps24.mp4": ({"times": times_at(24, 30)}, [*range(12), *range(11, 30)]),
    "fps50.mp4": ({"times": times_at(50, 50)}, [0, 1, 2, 3, *range(5, 50, 2)]),
    "vfr.mkv": ({"times": _vfr_times(30)},
                [0, 1, 2, 3, 3, 4, 5, 6, 7, 7, 7, 7, 8, 9, 10, 11, 12, 12, 12, 12, 12, 12, 12, 13, 14,
                 15, 16, 17, 17, 18, 19, 20, 21, 21, 21, 21, 22, 23, 24, 25, 26, 26, 26, 26, 26, 26, 26,
                 27, 28, 29]),
    "vp9.webm": ({"times": times_at(30, 24), "codec": "libvpx-vp9"}, FFMPEG_30FPS[:22]),
    # Video starting at 0.2 s beside audio starting at 0: the gap is filled with frame 0.
    "late_audio.mp4": ({"times": times_at(25, 10, Fraction(1, 5)), "audio_seconds": 0.6},
                       [0, 0, 0, 0, 0, 0, *range(1, 10)]),
    # A video-only file (ffmpeg picks VSCFR there): a late start is not filled.
    "late.mp4": ({"times": times_at(25, 10, Fraction(1, 5))}, list(range(10))),
}


@pytest.mark.parametrize("name", CASES)
def test_resampling_matches_ffmpeg_cli(tmp_path, name):
    kwargs, expected = CASES[name]
    clip = make_clip(tmp_path / name, **kwargs)
    frames = list(iter_frames_25fps(clip))
    assert all(f.shape == (HEIGHT, WIDTH, 3) and f.dtype == np.uint8 for f in frames)
    assert [index_of(f) for f in frames] == expected
    assert count_frames_25fps(clip) == len(expected)


def test_frames_are_independent_copies(tmp_path):
    clip = make_clip(tmp_path / "c.mkv", _vfr_times(8))  # has repeated frames
    frames = list(iter_frames_25fps(clip))
    frames[3][:] = 0
    assert index_of(frames[4]) == 3 and frames[4].any()


def test_max_frames_stops_early(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", times_at(30, 30))
    assert [index_of(f) for f in iter_frames_25fps(clip, max_frames=5)] == [0, 1, 2, 3, 4]
    assert list(iter_frames_25fps(clip, max_frames=0)) == []


def test_portrait_rotation_is_applied(tmp_path):
    clip = make_clip(tmp_path / "phone.mp4", times_at(25, 5))
    set_display_rotation(clip, 1)  # a phone held upright: stored landscape, shown turned 90 degrees
    info = probe_video(clip)
    assert (info.width, info.height, info.rotation) == (HEIGHT, WIDTH, 90)
    frames = list(iter_frames_25fps(clip))
    assert frames[0].shape == (WIDTH, HEIGHT, 3)
    assert frames[0][0, -1, 0] > 200 and frames[0][0, -1, 1] < 60  # red corner: top-left -> top-right
    assert [index_of(np.rot90(f)) for f in frames] == [0, 1, 2, 3, 4]


def test_probe_demo1(assets_dir):
    info = probe_video(assets_dir / "demo1_video.mp4")
    assert (info.width, info.height) == (1080, 1920)
    assert info.codec == "hevc" and info.rotation == 0
    assert info.fps == 25 and info.num_frames == 250
    assert info.duration == pytest.approx(10.0, abs=0.05)


def test_demo3_30fps_to_25fps(assets_dir):
    path = assets_dir / "demo3_video.mp4"
    assert probe_video(path).fps == 30
    # The ffmpeg 9.0.2 CLI writes 502 frames for this 600-frame, 20 s clip (not 500: the lag).
    assert count_frames_25fps(path) == 502
    ours = list(iter_frames_25fps(path, max_frames=50))  # the first 2 s
    with av.open(str(path)) as container:
        source = [f.to_ndarray(format="rgb24") for f, _ in zip(container.decode(video=0), range(60))]
    assert len(ours) == 50 and ours[0].shape == (1920, 1080, 3)
    for k, frame in enumerate(ours):
        assert np.array_equal(frame, source[FFMPEG_30FPS[k]]), f"output frame {k}"


# -- bad inputs -----------------------------------------------------------------------------------


def _wav(path):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _no_frames(path):
    with av.open(str(path), "w") as container:  # a video track that never got a frame
        video = container.add_stream("libx264", rate=25)
        video.width, video.height = 64, 48
        audio = container.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4096), np.float32), format="flt", layout="mono")
        frame.sample_rate = 16000
        container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    return path


def _truncated(path, assets_dir):
    data = (assets_dir / "demo1_video.mp4").read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


BAD = {
    "missing": (lambda p, a: p, "not found"),
    "directory": (lambda p, a: (p.mkdir(), p)[1], "directory"),
    "empty": (lambda p, a: (p.write_bytes(b""), p)[1], "empty"),
    "text": (lambda p, a: (p.write_text("not a video\n" * 20), p)[1], "not a readable media file"),
    "wav": (lambda p, a: _wav(p), "no video stream"),
    "no_frames": (lambda p, a: _no_frames(p), "no"),
    "truncated": (lambda p, a: _truncated(p, a), "not a readable media file"),
}


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize("reader", ["probe", "iter", "count", "source"])
def test_bad_input_names_the_file(tmp_path, assets_dir, kind, reader):
    make, words = BAD[kind]
    path = make(tmp_path / f"{kind}.mkv", assets_dir)
    call = {
        "probe": lambda: probe_video(path),
        "iter": lambda: list(iter_frames_25fps(path)),
        "count": lambda: count_frames_25fps(path),
        "source": lambda: list(FrameSource(path, 3)),
    }[reader]
    with pytest.raises(InputError) as err:
        call()
    assert str(path) in str(err.value) and words in str(err.value)
    assert "hint:" in str(err.value)


# -- ping-pong ----------------------------------------------------------------------------------


def test_pingpong_index_follows_the_reference():
    # loop_video concatenates frames, frames[::-1], frames, ...: each turn repeats the end frame.
    assert [pingpong_index(i, 4) for i in range(11)] == [0, 1, 2, 3, 3, 2, 1, 0, 0, 1, 2]
    assert [pingpong_index(i, 1) for i in range(4)] == [0, 0, 0, 0]
    assert [pingpong_index(i, 2) for i in range(6)] == [0, 1, 1, 0, 0, 1]
    with pytest.raises(ValueError):
        pingpong_index(0, 0)


def test_frame_source_loops_through_a_disk_spill(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", times_at(25, 4))
    spill = tmp_path / "spill"
    spill.mkdir()
    source = FrameSource(clip, 11, spill_dir=spill)
    pairs = []
    for pair in source:
        pairs.append(pair)
        if len(pairs) == 2:
            assert list(spill.iterdir()), "the spill file exists while looping"
    assert [i for i, _ in pairs] == [0, 1, 2, 3, 3, 2, 1, 0, 0, 1, 2]
    assert [index_of(f) for _, f in pairs] == [0, 1, 2, 3, 3, 2, 1, 0, 0, 1, 2]
    assert source.spilled and source.n_video == 4
    assert list(spill.iterdir()) == [], "the spill is deleted once the last frame is out"


def test_frame_source_streams_when_the_video_is_long_enough(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", times_at(25, 10))
    spill = tmp_path / "spill"
    spill.mkdir()
    source = FrameSource(clip, 6, spill_dir=spill)
    assert [(i, index_of(f)) for i, f in source] == [(i, i) for i in range(6)]
    assert not source.spilled and list(spill.iterdir()) == []


def test_frame_source_cleans_up_when_stopped_early(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", times_at(25, 3))
    spill = tmp_path / "spill"
    spill.mkdir()
    frames = iter(FrameSource(clip, 20, spill_dir=spill))
    next(frames), next(frames)
    assert list(spill.iterdir())
    frames.close()
    assert list(spill.iterdir()) == []
