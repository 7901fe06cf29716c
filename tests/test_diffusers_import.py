"""A broken HF transformers install must not surface as a bare diffusers traceback.

diffusers imports transformers whenever its distribution is installed. A fresh process sees
a stand-in transformers (a dist-info with a version, and a package whose import fails the
way a transformers with an unmet tokenizers pin does) and must get fastsync's error naming
the cause.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
CAUSE = "tokenizers>=0.22.0,<=0.23.0 is required for a normal functioning of this module"

SCRIPT = """
from fastsync.components import random_vae
from fastsync.errors import FastsyncError
try:
    random_vae("tiny")
except FastsyncError as exc:
    print("FASTSYNC_ERROR", exc)
else:
    print("NO_ERROR")
"""


def _broken_transformers(root: Path) -> Path:
    (root / "transformers").mkdir(parents=True)
    (root / "transformers" / "__init__.py").write_text(f"raise ImportError({CAUSE!r})\n")
    info = root / "transformers-4.99.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 4.99.0\n")
    (info / "top_level.txt").write_text("transformers\n")
    return root


def _run(extra_path: Path | None) -> str:
    path = [str(SRC)] + ([str(extra_path)] if extra_path else [])
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": ":".join(path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_a_broken_transformers_gives_a_clear_error(tmp_path):
    out = _run(_broken_transformers(tmp_path))
    assert "FASTSYNC_ERROR diffusers could not import AutoencoderKL" in out
    assert CAUSE in out and "uninstall it (fastsync does not need it)" in out


def test_without_it_the_vae_builds():
    assert "NO_ERROR" in _run(None)
