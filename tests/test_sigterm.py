"""A job stopped by SIGTERM (what schedulers send) leaves no output and no temp file."""

import signal
import subprocess
import sys
import time
import wave


def test_sigterm_mid_job_leaves_nothing_behind(tmp_path, assets_dir):
    with wave.open(str(assets_dir / "demo1_audio.wav")) as r:
        params, data = r.getparams(), r.readframes(3 * 16000)
    with wave.open(str(tmp_path / "a.wav"), "wb") as w:
        w.setparams(params)
        w.writeframes(data)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastsync.cli", "run", "--video", str(assets_dir / "demo1_video.mp4"),
         "--audio", str(tmp_path / "a.wav"), "--output", str(out_dir / "o.mp4"), "--random-weights",
         "--model-size", "tiny", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(out_dir.iterdir()) and proc.poll() is None:
        time.sleep(0.2)  # wait until the writer's temp file exists: the job is mid-way
    assert proc.poll() is None, f"the job ended before it could be interrupted: {proc.communicate()}"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "no output was written" in err
    assert list(out_dir.iterdir()) == []
