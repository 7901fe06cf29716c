"""The Python API: load once, run many jobs; the landmark cache between runs on one video."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from job_clips import decode_rgb, expected_frames, inspect, source_frames, trim_wav, wav_samples, write_clip

from fastsync.api import LipSync
from fastsync.denoise import SamplingOptions

torch.set_num_threads(2)

QUICK = SamplingOptions(steps=2)


@pytest.fixture(scope="module")
def engine():
    return LipSync.load(random_weights=True, model_size="tiny", device="cpu")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, assets_dir):
    """A 10-frame face clip, the same frames re-encoded as an 8-frame clip, and two tracks
    (0.6 s and 1.0 s) that both loop the video."""
    tmp = tmp_path_factory.mktemp("api_inputs")
    frames = source_frames(assets_dir / "demo1_video.mp4", 10, size=(540, 960))
    video = write_clip(tmp / "ten.mp4", frames)
    other = write_clip(tmp / "eight.mp4", frames[:8])
    short = trim_wav(assets_dir / "demo2_audio.wav", tmp / "short.wav", 0.6)
    long = trim_wav(assets_dir / "demo3_audio.wav", tmp / "long.wav", 1.0)
    return video, other, short, long


def check_output(report, path, audio):
    frames = expected_frames(wav_samples(audio))
    assert report.output == path and report.frames == frames
    assert report.frames_without_face == 0 and report.frames_with_several_faces == 0
    assert len(report.mouth_boxes) == frames and all(box is not None for box in report.mouth_boxes)
    written = inspect(path)
    assert (written.video_codec, written.audio_codec, written.frames) == ("h264", "aac", frames)
    assert written.audio_seconds == pytest.approx(min(frames / 25, wav_samples(audio) / 16000), abs=1024 / 16000)


def test_one_engine_many_jobs_and_the_landmark_cache(engine, inputs, detections, tmp_path):
    video, _, short, long = inputs
    cache = tmp_path / "landmarks.json"

    first = engine.run(video, short, tmp_path / "first.mp4", sampling=QUICK, landmarks_cache=cache)
    check_output(first, tmp_path / "first.mp4", short)
    assert len(detections) == 10  # each source frame once, though the video is looped
    saved = json.loads(cache.read_text())
    assert sorted(saved["frames"], key=int) == [str(i) for i in range(10)]

    detections.clear()
    second = engine.run(video, long, tmp_path / "second.mp4", sampling=QUICK, landmarks_cache=cache)
    check_output(second, tmp_path / "second.mp4", long)
    assert len(detections) == 0, "the second run on the same video should take every face from the cache"
    assert second.frames != first.frames

    # The cached landmarks are exactly the detected ones: the same job without the cache
    # detects again and writes the same video.
    detections.clear()
    fresh = engine.run(video, long, tmp_path / "fresh.mp4", sampling=QUICK)
    assert len(detections) == 10
    assert fresh.mouth_boxes == second.mouth_boxes
    for i, (a, b) in enumerate(zip(decode_rgb(tmp_path / "fresh.mp4"), decode_rgb(tmp_path / "second.mp4"))):
        assert np.array_equal(a, b), f"frame {i} differs with the landmark cache"


def test_the_first_job_warms_the_engine_up_and_later_ones_do_not(inputs, tmp_path, monkeypatch):
    from fastsync.accel import warmup

    calls = []
    monkeypatch.setattr(warmup, "warm_up", lambda components, sampling: calls.append(sampling) or {})
    fresh = LipSync.load(random_weights=True, model_size="tiny", device="cpu")
    video, _, short, _ = inputs
    for name in ("a.mp4", "b.mp4"):
        fresh.run(video, short, tmp_path / name, sampling=QUICK)
    assert calls == [QUICK]  # the first job's sampling: the warm-up takes its chunk shape
    fresh.warm_up()  # an explicit call still warms
    assert len(calls) == 2


def test_landmark_cache_of_another_video_is_ignored_and_replaced(engine, inputs, detections, tmp_path):
    video, other, short, _ = inputs
    cache = tmp_path / "landmarks.json"
    engine.run(video, short, tmp_path / "a.mp4", sampling=QUICK, landmarks_cache=cache)
    key_of_video = json.loads(cache.read_text())["key"]

    detections.clear()
    report = engine.run(other, short, tmp_path / "b.mp4", sampling=QUICK, landmarks_cache=cache)
    assert report.frames == expected_frames(wav_samples(short))
    assert len(detections) == 8, "landmarks cached for another video must not be used"
    saved = json.loads(cache.read_text())
    assert saved["key"] != key_of_video and sorted(saved["frames"], key=int) == [str(i) for i in range(8)]
