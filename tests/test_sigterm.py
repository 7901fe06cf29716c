"""A job stopped by SIGTERM (what schedulers send) leaves no output and no temp file."""

import os
import signal
import subprocess
import sys
import time
import uuid
import wave
from pathlib import Path

import pytest


@pytest.mark.parametrize("host", [[], ["--host-processes"]], ids=["threads", "processes"])
def test_sigterm_mid_job_leaves_nothing_behind(tmp_path, assets_dir, host):
    with wave.open(str(assets_dir / "demo1_audio.wav")) as r:
        params, data = r.getparams(), r.readframes(3 * 16000)
    with wave.open(str(tmp_path / "a.wav"), "wb") as w:
        w.setparams(params)
        w.writeframes(data)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    marker = f"fastsync-sigterm-{uuid.uuid4().hex}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastsync.cli", "run", "--video", str(assets_dir / "demo1_video.mp4"),
         "--audio", str(tmp_path / "a.wav"), "--output", str(out_dir / "o.mp4"), "--random-weights",
         "--model-size", "tiny", "--device", "cpu", *host],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "FASTSYNC_TEST_MARK": marker})
    deadline = time.time() + 120
    while time.time() < deadline and not any(out_dir.iterdir()) and proc.poll() is None:
        time.sleep(0.2)  # wait until the writer's temp file exists: the job is mid-way
    assert proc.poll() is None, f"the job ended before it could be interrupted: {proc.communicate()}"
    # the check below can see them: the job, and with processes its fork server and two workers
    assert len(_processes_with(marker)) >= (4 if host else 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "no output was written" in err
    assert list(out_dir.iterdir()) == []
    assert _gone(marker), "a worker process outlived the job"



def _processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment holds `marker` (children inherit it)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def _gone(marker: str, wait_s: float = 15.0) -> bool:
    deadline = time.time() + wait_s
    while _processes_with(marker) and time.time() < deadline:
        time.sleep(0.2)  # the fork server notices its parent is gone within a moment
    return not _processes_with(marker)
