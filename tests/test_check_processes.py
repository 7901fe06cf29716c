"""bench.check_processes on the CPU: each variant in its own process, every pair compared.

Tiny random models; on the CPU every process computes alike, so every difference is 0.
The second variant turns a FastOptions switch off through the command line's syntax, and
the chunks (16 different faces, nothing repeats) take the same path either way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_two_processes_compute_alike_and_each_part_is_compared(tmp_path):
    out = tmp_path / "processes.json"
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "bench.check_processes", "--model-size", "tiny", "--device", "cpu",
                           "--steps", "2", "--variant", "a:cache=x", "--variant", "b:cache=x,repeated_faces=0", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    runs = {run["name"]: run for run in result["runs"]}
    assert runs["b"]["overrides"] == {"repeated_faces": 0} and "error" not in runs["a"] and "error" not in runs["b"]
    assert len(runs["a"]["chunk_s"]) == 3
    [pair] = result["pairs"]
    assert (pair["a"], pair["b"]) == ("a", "b")
    assert pair["max_abs_diff"] == {"encode": 0.0, "decode": 0.0, "unet": 0.0, "chunk": 0.0}
