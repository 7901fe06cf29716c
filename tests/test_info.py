"""`fastsync info`: versions, devices, and which checkpoint files are present or missing."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import torch

from fastsync import cli
from fastsync.checkpoints import CheckpointLayout


def run_info(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["info", *argv]) == 0
    return out.getvalue()


def fill(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 2_000_000)


REQUIRED = ["latentsync_unet.pt", "whisper/tiny.pt", "sd-vae-ft-mse/config.json",
            "sd-vae-ft-mse/diffusion_pytorch_model.safetensors"]
FACES = ["auxiliary/models/buffalo_l/det_10g.onnx", "auxiliary/models/buffalo_l/2d106det.onnx"]


def test_missing_files_are_named_with_the_command_that_fetches_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    fill(tmp_path, REQUIRED[:2])
    info = json.loads(run_info("--checkpoint-dir", str(tmp_path), "--version", "1.5", "--json"))
    c = info["checkpoints"]
    assert c["missing"] == REQUIRED[2:]  # the face models are optional: dlib stands in
    assert c["fetch"] == f"fastsync download --version 1.5 --dir {tmp_path}"
    assert c["face_backend_auto"] == "dlib"
    assert [row["mb"] for row in c["files"][:2]] == [2.0, 2.0]
    assert info["packages"]["torch"] == torch.__version__
    assert info["devices"]["cuda"] == [] or torch.cuda.is_available()
    assert info["compiled_blocks"] == {"dir": str(tmp_path / "inductor" / "fastsync-regions"), "files": 0, "mb": 0.0}

    text = run_info("--checkpoint-dir", str(tmp_path))
    assert "MISSING sd-vae-ft-mse/config.json" in text and "ok      latentsync_unet.pt  2.0 MB" in text
    assert f"fastsync download --version 1.6 --dir {tmp_path}" in text


def test_a_complete_layout_has_nothing_missing_and_picks_insightface(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    fill(tmp_path / "checkpoints", REQUIRED + FACES)
    kept = tmp_path / "inductor" / "fastsync-regions" / "ab" / "block.bin"
    fill(kept.parent, [kept.name])
    info = json.loads(run_info("--checkpoint-dir", str(tmp_path / "checkpoints"), "--json"))
    assert info["checkpoints"]["missing"] == [] and info["checkpoints"]["fetch"] is None
    assert info["checkpoints"]["face_backend_auto"] == "insightface"
    assert (info["compiled_blocks"]["files"], info["compiled_blocks"]["mb"]) == (1, 2.0)
    assert "fetch them" not in run_info("--checkpoint-dir", str(tmp_path / "checkpoints"))
    assert CheckpointLayout(tmp_path / "checkpoints").has_face_models()
