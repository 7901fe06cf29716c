"""`fastsync run` with bad inputs: exit code 2, a message naming the file and the problem,
nothing at the output path and nothing left in the output folder.

Everything that can be checked without the models must be checked before they load
(with the real weights a load takes a minute): those cases run with a `load_components`
that fails the test if it is called. Only "no face in the video" needs the job itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from job_clips import TINY, QUICK, trim_wav, write_clip, write_wav

from fastsync import api, cli


@pytest.fixture
def out_dir(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture(scope="module")
def speech(tmp_path_factory, assets_dir):
    return trim_wav(assets_dir / "demo2_audio.wav", tmp_path_factory.mktemp("speech") / "speech.wav", 0.3)


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(options):
        raise AssertionError("the models were loaded before the inputs were checked")

    monkeypatch.setattr(api, "load_components", refuse)


def run_failing(argv, capsys) -> str:
    """Run the CLI, expect exit code 2 (an error, not a crash), return stderr."""
    code = cli.main(["run", *argv, *TINY, *QUICK])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "fastsync: error: " in err and "Traceback" not in err
    return err


def argv_for(video, audio, output) -> list[str]:
    return ["--video", str(video), "--audio", str(audio), "--output", str(output)]


def _text_as_mp4(tmp: Path) -> Path:
    path = tmp / "notes.mp4"
    path.write_text("this is not a video\n")
    return path


# (name, how to make the bad video, words the message must contain)
BAD_VIDEOS = [
    ("missing", lambda tmp, speech: tmp / "absent.mp4", "not found"),
    ("text file named .mp4", lambda tmp, speech: _text_as_mp4(tmp), "not a readable media file"),
    ("a wav passed as --video", lambda tmp, speech: speech, "no video stream"),
]


@pytest.mark.parametrize("make, problem", [c[1:] for c in BAD_VIDEOS], ids=[c[0] for c in BAD_VIDEOS])
def test_bad_video_fails_before_loading(make, problem, tmp_path, out_dir, speech, capsys, no_model_load):
    video = make(tmp_path, speech)
    err = run_failing(argv_for(video, speech, out_dir / "result.mp4"), capsys)
    assert str(video) in err and problem in err
    assert list(out_dir.iterdir()) == []


def _wav_of_zeros(tmp: Path) -> Path:
    return write_wav(tmp / "zeros.wav", np.zeros(16000, np.int16))


def _wav_without_samples(tmp: Path) -> Path:
    return write_wav(tmp / "empty.wav", np.zeros(0, np.int16))


def _wav_of_100_samples(tmp: Path) -> Path:
    return write_wav(tmp / "click.wav", np.random.default_rng(0).normal(0, 3000, 100))


BAD_AUDIO = [
    ("missing", lambda tmp: tmp / "absent.wav", "not found"),
    ("silent", _wav_of_zeros, "silent"),
    ("zero samples", _wav_without_samples, "zero samples"),
    ("too short", _wav_of_100_samples, "too short"),
]


@pytest.mark.parametrize("make, problem", [c[1:] for c in BAD_AUDIO], ids=[c[0] for c in BAD_AUDIO])
def test_bad_audio_fails_before_loading(make, problem, tmp_path, out_dir, assets_dir, capsys, no_model_load):
    audio = make(tmp_path)
    err = run_failing(argv_for(assets_dir / "demo1_video.mp4", audio, out_dir / "result.mp4"), capsys)
    assert str(audio) in err and problem in err
    assert list(out_dir.iterdir()) == []


def test_output_under_a_file_fails_before_loading(tmp_path, assets_dir, speech, capsys, no_model_load):
    blocker = tmp_path / "report.txt"
    blocker.write_text("a file, not a folder")
    output = blocker / "result.mp4"
    err = run_failing(argv_for(assets_dir / "demo1_video.mp4", speech, output), capsys)
    assert str(output) in err and "cannot create the output folder" in err
    assert blocker.read_text() == "a file, not a folder"


def test_output_that_is_a_directory_fails_before_loading(out_dir, assets_dir, speech, capsys, no_model_load):
    err = run_failing(argv_for(assets_dir / "demo1_video.mp4", speech, out_dir), capsys)
    assert str(out_dir) in err and "is a directory" in err
    assert list(out_dir.iterdir()) == []


def test_bad_option_value_is_a_usage_error(out_dir, assets_dir, speech, capsys, no_model_load):
    code = cli.main(["run", *argv_for(assets_dir / "demo1_video.mp4", speech, out_dir / "r.mp4"), *TINY,
                     "--steps", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "steps must be >= 1" in err and "Traceback" not in err


def test_missing_required_option_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--video", "v.mp4", "--audio", "a.wav"])
    assert exc.value.code == 2
    assert "--output" in capsys.readouterr().err


def test_video_without_a_face_leaves_nothing(tmp_path, out_dir, speech, capsys):
    """Found only after every frame was searched; the half-written video must go."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(6)]
    frames += [np.full((240, 320, 3), 90, np.uint8) for _ in range(4)]
    video = write_clip(tmp_path / "noise.mp4", frames)
    output = out_dir / "result.mp4"
    err = run_failing(argv_for(video, speech, output), capsys)
    assert str(video) in err and "no face" in err
    assert list(out_dir.iterdir()) == []  # neither the output nor its hidden temporary file


def test_an_existing_output_survives_a_failed_job(tmp_path, out_dir, assets_dir, capsys, no_model_load):
    output = out_dir / "result.mp4"
    output.write_bytes(b"previous result")
    run_failing(argv_for(assets_dir / "demo1_video.mp4", _wav_of_zeros(tmp_path), output), capsys)
    assert output.read_bytes() == b"previous result"
    assert [p.name for p in out_dir.iterdir()] == ["result.mp4"]


def test_console_script_reports_errors_with_exit_code_2(tmp_path, speech):
    script = Path(sys.executable).with_name("fastsync")
    if not script.is_file():
        pytest.skip(f"no console script beside {sys.executable} (package not installed?)")
    video = tmp_path / "absent.mp4"
    done = subprocess.run([str(script), "run", *argv_for(video, speech, tmp_path / "o.mp4"), *TINY],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"fastsync: error: {video}: video file not found" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "o.mp4").exists()
