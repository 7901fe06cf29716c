"""`fastsync warmup`: compile fast mode ahead of the jobs and keep it on disk.

On a CPU there is nothing to compile (fast mode compiles and captures on CUDA only) and the
command says so. On a GPU, a second process finds every block on disk and compiles none.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastsync import cli

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["warmup", "--random-weights", "--model-size", "tiny"]


def test_on_a_cpu_it_loads_and_says_there_is_nothing_to_compile():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main([*TINY, "--device", "cpu"])
    assert code == 0
    assert "models loaded on cpu: unet" in out.getvalue()
    assert "nothing to compile on cpu" in out.getvalue()


def test_a_bad_interval_is_a_usage_error(capsys):
    assert cli.main([*TINY, "--device", "cpu", "--deepcache-interval", "-1"]) == 2
    err = capsys.readouterr().err
    assert "deepcache interval must be >= 0" in err and "fastsync warmup --help" in err


@pytest.mark.requires_cuda
def test_on_a_gpu_a_second_process_loads_every_block(tmp_path):
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": os.pathsep.join([str(SRC), *sys.path])}

    def warmup() -> str:
        proc = subprocess.run([sys.executable, "-m", "fastsync.cli", *TINY, "--device", "cuda"], env=env,
                              capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    first = re.search(r"compiled (\d+) blocks .* loaded (\d+) from disk", warmup())
    second = re.search(r"compiled (\d+) blocks .* loaded (\d+) from disk", warmup())
    assert first and second
    assert int(first[1]) > 0 and int(first[2]) == 0
    assert int(second[1]) == 0 and int(second[2]) == int(first[1])
