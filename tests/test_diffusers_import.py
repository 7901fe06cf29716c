"""What diffusers' import pulls in from other installed packages.

diffusers imports transformers whenever its distribution is installed. A fresh process sees
a stand-in transformers (a dist-info with a version, and a package whose import fails the
way a transformers with an unmet tokenizers pin does) and must get fastsync's error naming
the cause. Likewise diffusers imports Flax when jax and flax are installed, unless USE_FLAX
says no, which fastsync does by default: a stand-in flax whose import fails shows whether
it was imported.
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


def _broken_package(root: Path, name: str, cause: str) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(f"raise ImportError({cause!r})\n")
    info = root / f"{name}-4.99.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 4.99.0\n")
    (info / "top_level.txt").write_text(f"{name}\n")
    return root


def _broken_transformers(root: Path) -> Path:
    return _broken_package(root, "transformers", CAUSE)


def _broken_flax(root: Path) -> Path:
    _broken_package(root, "jax", "the stand-in jax was imported")
    return _broken_package(root, "flax", "the stand-in flax was imported")


def _run(extra_path: Path | None, env: dict | None = None) -> str:
    path = [str(SRC)] + ([str(extra_path)] if extra_path else [])
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": ":".join(path), "PATH": "/usr/bin:/bin", **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_a_broken_transformers_gives_a_clear_error(tmp_path):
    out = _run(_broken_transformers(tmp_path))
    assert "FASTSYNC_ERROR diffusers could not import AutoencoderKL" in out
    assert CAUSE in out and "uninstall it (fastsync does not need it)" in out


def test_without_it_the_vae_builds():
    assert "NO_ERROR" in _run(None)


def test_flax_is_not_imported_by_default(tmp_path):
    assert "NO_ERROR" in _run(_broken_flax(tmp_path))


def test_a_users_use_flax_is_kept(tmp_path):
    # the stand-in proves the switch is what keeps Flax out: with it on, diffusers imports it
    out = _run(_broken_flax(tmp_path), {"USE_FLAX": "1"})
    assert "FASTSYNC_ERROR" in out and "the stand-in flax was imported" in out


LEAN_SCRIPT = """
from fastsync.components import random_vae
random_vae("tiny")
print("VAE_BUILT")
try:
    import transformers  # the stand-in: importable again once diffusers is in
except ImportError as exc:
    print("AFTERWARDS", exc)
"""


def test_lean_imports_keep_diffusers_off_an_unused_package_and_give_it_back(tmp_path):
    """FASTSYNC_LEAN_IMPORTS=1: diffusers imports as if transformers were not installed, so
    a broken one no longer stops the VAE; afterwards the package imports as before."""
    path = ":".join([str(SRC), str(_broken_transformers(tmp_path))])
    proc = subprocess.run([sys.executable, "-c", LEAN_SCRIPT], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin", "FASTSYNC_LEAN_IMPORTS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "VAE_BUILT" in proc.stdout and f"AFTERWARDS {CAUSE}" in proc.stdout


def _cli_warmup(extra_path: Path, env: dict) -> subprocess.CompletedProcess:
    path = ":".join([str(SRC), str(extra_path)])
    return subprocess.run([sys.executable, "-m", "fastsync.cli", "warmup", "--random-weights", "--model-size", "tiny",
                           "--device", "cpu"], capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin", **env})


def test_the_command_line_imports_lean_unless_told_not_to(tmp_path):
    root = _broken_transformers(tmp_path)
    lean = _cli_warmup(root, {})
    assert lean.returncode == 0, lean.stderr[-3000:]
    assert "nothing to compile on cpu" in lean.stdout
    plain = _cli_warmup(root, {"FASTSYNC_LEAN_IMPORTS": "0"})
    assert plain.returncode == 2 and CAUSE in plain.stderr
