"""`fastsync run` end to end: the issue's acceptance run on a trimmed clip, ping-pong
looping, a photo for the video, frames without a face or with several, and the real
console entry point.

Each job runs the tiny random models on the CPU; the pipeline around them (audio
features, 25 fps resampling, face alignment, paste-back, H.264 + AAC writing) is the
real one. Inputs are trimmed so that the whole module takes well under a minute.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from job_clips import (
    QUICK,
    TINY,
    abs_diff,
    decode_rgb,
    expected_frames,
    inspect,
    mouth_and_outside,
    read_stamp,
    source_frames,
    stamp,
    trim_wav,
    wav_samples,
    write_clip,
)

from fastsync import cli
from fastsync.face.dlib_backend import DlibLandmarker

torch.set_num_threads(2)

SUMMARY = re.compile(r"^(?P<frames>\d+) frames in (?P<seconds>[\d.]+) s \((?P<fps>[\d.]+) frames/s\) -> (?P<out>.+?)(;|$)",
                     re.MULTILINE)
# Thresholds on the mean absolute difference (0-255) between an output frame and its input.
# Random weights turn the mouth into noise (measured ~45); re-encoding alone moves a pixel
# by ~1.3 on average and never by 40 (measured max ~26 on demo3).
MOUTH_CHANGED = 15.0
UNCHANGED_MEAN = 3.0
UNCHANGED_MAX = 40.0


def run_cli(argv: list[str]) -> tuple[int, str]:
    """cli.main in this process; returns (exit code, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    return code, out.getvalue()


def summary_of(stdout: str) -> re.Match:
    match = SUMMARY.search(stdout)
    assert match, f"no summary line in the output: {stdout!r}"
    return match


@pytest.fixture(scope="module")
def landmarker():
    return DlibLandmarker()


# -- the acceptance run: demo3 (30 fps, 1080x1920 HEVC) with 1.2 s of demo1's audio ------------


@pytest.fixture(scope="module")
def acceptance(tmp_path_factory, assets_dir):
    tmp = tmp_path_factory.mktemp("acceptance")
    audio = trim_wav(assets_dir / "demo1_audio.wav", tmp / "speech.wav", 1.2)
    output = tmp / "out.mp4"
    code, stdout = run_cli(["run", "--video", str(assets_dir / "demo3_video.mp4"), "--audio", str(audio),
                            "--output", str(output), *TINY])
    return code, stdout, output, wav_samples(audio)


def test_acceptance_run_writes_h264_aac_at_25fps(acceptance):
    code, _, output, samples = acceptance
    assert code == 0
    written = inspect(output)
    frames = expected_frames(samples)
    assert frames == 32  # 1.2 s: 60 features -> frames 0..31
    assert (written.video_codec, written.audio_codec) == ("h264", "aac")
    assert (written.width, written.height, written.fps) == (1080, 1920, 25)
    assert written.frames == frames
    assert written.sample_rate == 16000
    # The track is cut to frames / 25 s, or ends with the input (the frame count rounds up by
    # about two frames, as the reference's does); AAC codes 1024-sample packets: allow one.
    assert written.audio_seconds == pytest.approx(min(frames / 25, samples / 16000), abs=1024 / 16000)
    assert sorted(p.name for p in output.parent.iterdir()) == ["out.mp4", "speech.wav"]  # no temp files


def test_acceptance_run_prints_a_summary(acceptance):
    _, stdout, output, samples = acceptance
    match = summary_of(stdout)
    frames, seconds, fps = int(match["frames"]), float(match["seconds"]), float(match["fps"])
    assert frames == expected_frames(samples)
    assert seconds > 0 and fps == pytest.approx(frames / seconds, rel=0.05, abs=0.1)
    assert Path(match["out"]) == output


def test_acceptance_run_changes_the_mouth_and_nothing_outside_the_face(acceptance, assets_dir, landmarker):
    from fastsync.media.video import iter_frames_25fps

    _, _, output, _ = acceptance
    produced = decode_rgb(output)
    inputs = list(iter_frames_25fps(assets_dir / "demo3_video.mp4", max_frames=len(produced)))
    for i in range(0, len(produced), 3):
        face = landmarker.detect(inputs[i])
        assert face is not None, f"no face in input frame {i}"
        diff = abs_diff(produced[i], inputs[i])
        mouth, outside = mouth_and_outside(face.bbox, diff.shape)
        assert diff[mouth].mean() > MOUTH_CHANGED, f"frame {i}: mouth unchanged"
        assert diff[outside].mean() < UNCHANGED_MEAN, f"frame {i}: the frame changed outside the face"
        assert diff[outside].max() < UNCHANGED_MAX, f"frame {i}: a pixel far from the face changed"


# -- ping-pong: a 10-frame video with 1 s of audio ---------------------------------------------


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory, assets_dir):
    """demo1's first 10 frames at 540x960, each stamped with its index."""
    frames = source_frames(assets_dir / "demo1_video.mp4", 10, size=(540, 960))
    tmp = tmp_path_factory.mktemp("short_clip")
    return write_clip(tmp / "ten.mp4", [stamp(f, i) for i, f in enumerate(frames)])


def test_audio_longer_than_the_video_loops_it_back_and_forth(short_clip, assets_dir, tmp_path):
    audio = trim_wav(assets_dir / "demo2_audio.wav", tmp_path / "one_second.wav", 1.0)
    output = tmp_path / "looped.mp4"
    code, stdout = run_cli(["run", "--video", str(short_clip), "--audio", str(audio), "--output", str(output),
                            *TINY, *QUICK])
    assert code == 0
    frames = expected_frames(wav_samples(audio))
    assert frames == 27
    assert int(summary_of(stdout)["frames"]) == frames
    written = inspect(output)
    assert written.frames == frames and (written.width, written.height) == (540, 960)
    assert written.audio_seconds == pytest.approx(1.0, abs=1024 / 16000)  # all of it: 27 / 25 s > 1 s
    forward, backward = list(range(10)), list(range(9, -1, -1))
    assert [read_stamp(f) for f in decode_rgb(output)] == (forward + backward + forward)[:frames]


# -- a photo instead of a video: one frame, looped ---------------------------------------------


@pytest.mark.parametrize(("suffix", "orientation"), [(".png", 1), (".jpg", 1), (".jpg", 6)])
def test_a_photo_is_lip_synced_as_a_video_of_one_frame(suffix, orientation, assets_dir, tmp_path, landmarker):
    """The reference loops a video that is shorter than the audio; a photo is a video of one
    frame, so every output frame is that photo with a new mouth. A phone's portrait photo
    holds its pixels sideways with an EXIF orientation (6: turn clockwise to view), which
    the output follows."""
    from PIL import Image

    photo = tmp_path / f"face{suffix}"
    image = source_frames(assets_dir / "demo1_video.mp4", 1, size=(540, 960))[0]
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(image)) if orientation == 6 else image)
    if suffix == ".jpg":
        exif = Image.Exif()
        exif[0x0112] = orientation  # the EXIF Orientation tag
        stored.save(photo, exif=exif)
    else:
        stored.save(photo)
    image = np.asarray(Image.open(photo).convert("RGB"))  # as stored: PIL leaves the orientation to us
    if orientation == 6:  # upright, and as the lossy jpg decodes
        image = np.ascontiguousarray(np.rot90(image, k=-1))
    audio = trim_wav(assets_dir / "demo2_audio.wav", tmp_path / "half_second.wav", 0.5)
    output = tmp_path / "photo.mp4"
    code, stdout = run_cli(["run", "--video", str(photo), "--audio", str(audio), "--output", str(output),
                            *TINY, *QUICK])
    assert code == 0
    frames = expected_frames(wav_samples(audio))
    assert int(summary_of(stdout)["frames"]) == frames
    written = inspect(output)
    assert written.frames == frames and (written.width, written.height) == (540, 960)
    face = landmarker.detect(image)
    assert face is not None
    for i, produced in enumerate(decode_rgb(output)):
        diff = abs_diff(produced, image)
        mouth, outside = mouth_and_outside(face.bbox, diff.shape)
        assert diff[mouth].mean() > MOUTH_CHANGED, f"frame {i}: mouth unchanged"
        assert diff[outside].mean() < UNCHANGED_MEAN, f"frame {i}: the photo changed outside the face"
        assert diff[outside].max() < UNCHANGED_MAX, f"frame {i}: a pixel far from the face changed"


# -- frames without a face, and with two faces -------------------------------------------------

SINGLE, DOUBLE, BLANK = range(0, 6), range(6, 12), range(12, 16)


@pytest.fixture(scope="module")
def mixed_clip(tmp_path_factory, assets_dir):
    """16 frames of 900x960: demo1's face alone (0-5), with a smaller demo3 face beside it
    (6-11), then black (12-15); audio of exactly 16 frames, so nothing loops."""
    left = source_frames(assets_dir / "demo1_video.mp4", 12, crop=(330, 240, 870, 1200))
    right = source_frames(assets_dir / "demo3_video.mp4", 12, crop=(310, 170, 850, 1130), size=(360, 640))
    frames = []
    for i in range(16):
        frame = np.full((960, 900, 3), 128, np.uint8)
        if i in BLANK:
            frame[:] = 0
        else:
            frame[:, :540] = left[i]
        if i in DOUBLE:
            frame[160:800, 540:] = right[i]
        frames.append(frame)
    tmp = tmp_path_factory.mktemp("mixed")
    video = write_clip(tmp / "mixed.mp4", frames)
    audio = trim_wav(assets_dir / "demo1_audio.wav", tmp / "speech.wav", 0.56)
    assert expected_frames(wav_samples(audio)) == 16
    return video, audio


def _run_mixed(mixed_clip, output: Path, *options: str):
    video, audio = mixed_clip
    code, stdout = run_cli(["run", "--video", str(video), "--audio", str(audio), "--output", str(output),
                            *TINY, *QUICK, *options])
    assert code == 0
    return decode_rgb(video), decode_rgb(output), stdout


@pytest.fixture(scope="module")
def mixed_job(mixed_clip, tmp_path_factory):
    return _run_mixed(mixed_clip, tmp_path_factory.mktemp("mixed_job") / "out.mp4")


def test_frames_without_a_face_are_counted_and_kept(mixed_job):
    inputs, produced, stdout = mixed_job
    assert len(produced) == 16
    assert int(summary_of(stdout)["frames"]) == 16
    assert f"; {len(BLANK)} frame(s) had no face and were kept unchanged" in stdout
    for i in BLANK:
        assert abs_diff(produced[i], inputs[i]).max() <= 2, f"blank frame {i} was changed"


def test_single_face_frames_are_lip_synced(mixed_job, landmarker):
    inputs, produced, _ = mixed_job
    for i in SINGLE:
        face = landmarker.detect(inputs[i])
        assert face is not None and face.num_faces == 1
        diff = abs_diff(produced[i], inputs[i])
        mouth, outside = mouth_and_outside(face.bbox, diff.shape)
        assert diff[mouth].mean() > MOUTH_CHANGED, f"frame {i}: mouth unchanged"
        assert diff[outside].mean() < UNCHANGED_MEAN, f"frame {i}: changed outside the face"


def test_with_several_faces_only_the_largest_is_changed(mixed_job, landmarker):
    inputs, produced, stdout = mixed_job
    assert f"; {len(DOUBLE)} frame(s) had several faces: the largest was used" in stdout
    for i in DOUBLE:
        largest = landmarker.detect(inputs[i])
        assert largest is not None and largest.num_faces == 2
        other = landmarker.detect(np.ascontiguousarray(inputs[i][:, 540:]))
        assert other is not None
        other_box = (other.bbox[0] + 540, other.bbox[1], other.bbox[2] + 540, other.bbox[3])
        assert largest.bbox[2] <= 540, "the left face is the larger one by construction"
        diff = abs_diff(produced[i], inputs[i])
        mouth, _ = mouth_and_outside(largest.bbox, diff.shape)
        other_mouth, _ = mouth_and_outside(other_box, diff.shape)
        assert diff[mouth].mean() > MOUTH_CHANGED, f"frame {i}: the largest face was not lip-synced"
        assert diff[other_mouth].mean() < UNCHANGED_MEAN, f"frame {i}: the smaller face was changed"


@pytest.mark.parametrize("host", ["--host-threads", "--host-processes"])
def test_face_near_a_point_takes_that_face_instead_of_the_largest(mixed_clip, landmarker, tmp_path, host):
    """--face-near at the smaller face (right half): it is lip-synced where both show, and the
    face that is alone is still the nearest one there."""
    inputs, produced, stdout = _run_mixed(mixed_clip, tmp_path / "near.mp4", "--face-near", "720,480", host)
    assert f"; {len(DOUBLE)} frame(s) had several faces: the one nearest (720, 480) was used" in stdout
    for i in DOUBLE:
        largest = landmarker.detect(inputs[i])
        chosen = landmarker.detect(inputs[i], near=(720, 480))
        assert chosen.bbox[0] >= 540 and largest.bbox[2] <= 540  # the right face, the left one
        diff = abs_diff(produced[i], inputs[i])
        chosen_mouth, _ = mouth_and_outside(chosen.bbox, diff.shape)
        largest_mouth, _ = mouth_and_outside(largest.bbox, diff.shape)
        assert diff[chosen_mouth].mean() > MOUTH_CHANGED, f"frame {i}: the face near the point was not lip-synced"
        assert diff[largest_mouth].mean() < UNCHANGED_MEAN, f"frame {i}: the largest face was changed"
    for i in SINGLE:
        face = landmarker.detect(inputs[i])
        mouth, _ = mouth_and_outside(face.bbox, (960, 900))
        assert abs_diff(produced[i], inputs[i])[mouth].mean() > MOUTH_CHANGED, f"frame {i}: mouth unchanged"


@pytest.mark.parametrize("value", ["720", "720,480,1", "x,480", "-5,480", "nan,1"])
def test_a_bad_face_near_point_fails_before_anything_loads(mixed_clip, tmp_path, value, capsys):
    video, audio = mixed_clip
    code, _ = run_cli(["run", "--video", str(video), "--audio", str(audio), "--output", str(tmp_path / "o.mp4"),
                       *TINY, f"--face-near={value}"])  # "=": argparse takes "-5,480" alone for an option
    assert code != 0
    assert f"--face-near {value!r} is not a point" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


# -- the installed console script --------------------------------------------------------------


def test_console_script_runs_a_job(short_clip, assets_dir, tmp_path):
    script = Path(sys.executable).with_name("fastsync")
    if not script.is_file():
        pytest.skip(f"no console script beside {sys.executable} (package not installed?)")
    audio = trim_wav(assets_dir / "demo2_audio.wav", tmp_path / "tiny.wav", 0.2)  # demo1 starts silent
    output = tmp_path / "out.mp4"
    done = subprocess.run([str(script), "run", "--video", str(short_clip), "--audio", str(audio),
                           "--output", str(output), *TINY, "--steps", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    frames = expected_frames(wav_samples(audio))
    assert int(summary_of(done.stdout)["frames"]) == frames == 7
    assert inspect(output).frames == frames
