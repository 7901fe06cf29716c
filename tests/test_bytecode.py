"""The bytecode hint of `fastsync warmup` (fastsync.tools.bytecode): given when Python can
neither find nor write bytecode for torch, and not once a bytecode cache holds it."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = ("import torch, torch._dynamo, torch._inductor\n"
          "from fastsync.tools.bytecode import missing_hint\n"
          "print(missing_hint())")


def _hint(prefix, write: bool) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONPYCACHEPREFIX": str(prefix)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if not write:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_no_bytecode_and_no_writing_gets_the_hint_and_a_cache_folder_removes_it(tmp_path):
    hint = _hint(tmp_path / "empty", write=False)
    assert "torch, torch._dynamo, torch._inductor" in hint and "PYTHONPYCACHEPREFIX" in hint
    _hint(tmp_path / "cache", write=True)  # fills the cache folder
    assert _hint(tmp_path / "cache", write=False) == "None"
