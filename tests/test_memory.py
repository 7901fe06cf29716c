"""Out of device memory: one clear error with the device, the need and the fixes; the failed
call's tensors released; the command line exits 2 with no traceback.

No GPU runs out of memory here: PyTorch's OutOfMemoryError is raised where a job would
raise it, which is all the conversion sees.
"""

from __future__ import annotations

import contextlib
import io
import weakref

import pytest
import torch
from job_clips import QUICK, TINY, source_frames, trim_wav, write_clip

from fastsync import cli, pipeline
from fastsync.errors import FastsyncError
from fastsync.memory import DeviceMemoryError, device_memory_errors

TORCH_TEXT = "CUDA out of memory. Tried to allocate 2.00 GiB."


def _fail_holding(tensors: list):
    held = torch.ones(1024)
    tensors.append(weakref.ref(held))
    raise torch.OutOfMemoryError(TORCH_TEXT)


def test_the_error_names_the_device_the_need_and_the_fixes():
    with pytest.raises(DeviceMemoryError) as caught:
        with device_memory_errors(torch.device("cpu"), "fast", "running the job"):
            _fail_holding([])
    text = str(caught.value)
    assert text.startswith("cpu ran out of memory while running the job")
    assert "fast mode needs about 5 GB" in text and "--version 1.5" in text
    assert "--device cuda:N" not in text  # a CPU has no other to choose
    assert isinstance(caught.value, FastsyncError)  # the CLI, batch and web UI show it as it is
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)  # PyTorch's own words stay reachable

    with pytest.raises(DeviceMemoryError, match="--mode fast, which needs far less") as caught:
        with device_memory_errors(torch.device("cpu"), "reference", "loading the models"):
            _fail_holding([])
    assert "reference mode needs about 13 GB" in str(caught.value)


def test_the_failed_calls_tensors_are_released_while_the_error_is_alive():
    tensors: list = []
    with pytest.raises(DeviceMemoryError) as caught:
        with device_memory_errors(torch.device("cpu"), "fast", "running the job"):
            _fail_holding(tensors)
    assert caught.value.__cause__.__traceback__ is not None  # the error and its traceback are alive...
    assert tensors[0]() is None  # ...but not the tensor the failing frame held


def test_other_errors_pass_unchanged():
    with pytest.raises(ValueError, match="not memory"):
        with device_memory_errors(torch.device("cpu"), "fast", "running the job"):
            raise ValueError("not memory")


def test_the_command_line_says_it_in_one_line(assets_dir, tmp_path, monkeypatch):
    video = write_clip(tmp_path / "v.mp4", source_frames(assets_dir / "demo1_video.mp4", 4, size=(270, 480)))
    audio = trim_wav(assets_dir / "demo2_audio.wav", tmp_path / "a.wav", 0.6)
    output = tmp_path / "out.mp4"

    def out_of_memory(self, *args):
        raise torch.OutOfMemoryError(TORCH_TEXT)

    monkeypatch.setattr(pipeline.Job, "run", out_of_memory)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = cli.main(["run", "--video", str(video), "--audio", str(audio), "--output", str(output), *TINY, *QUICK])
    assert code == 2
    lines = stderr.getvalue().strip().splitlines()
    assert lines[0] == f"fastsync: error: cpu ran out of memory while lip-syncing {video.name}"
    assert lines[1].startswith("  hint: a 512 px job") and "Traceback" not in stderr.getvalue()
