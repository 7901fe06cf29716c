"""Where the weights live: the official layout, the Hugging Face download, and
seeded random weights for machines that have none.

Official layout (what `fastsync download` produces and `--checkpoint-dir` expects):

    checkpoints/
      latentsync_unet.pt                      ByteDance/LatentSync-1.6 (or -1.5)
      whisper/tiny.pt                         same repo, OpenAI whisper format
      sd-vae-ft-mse/config.json               stabilityai/sd-vae-ft-mse (diffusers)
      sd-vae-ft-mse/diffusion_pytorch_model.safetensors
      auxiliary/models/buffalo_l/det_10g.onnx     InsightFace SCRFD detector
      auxiliary/models/buffalo_l/2d106det.onnx    InsightFace 106-point landmarks

The reference loads the VAE from the Hugging Face cache by repo id; we accept that
too (`hf_vae_from_cache`) so a user who already ran the reference needs no copy.
"""

from __future__ import annotations

import io
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from fastsync.errors import CheckpointError
from fastsync.files import write_atomically

HF_REPOS = {"1.5": "ByteDance/LatentSync-1.5", "1.6": "ByteDance/LatentSync-1.6"}
VAE_REPO = "stabilityai/sd-vae-ft-mse"
VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
# InsightFace publishes buffalo_l only as a release archive; this is the URL the
# insightface package itself downloads from.
BUFFALO_L_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"
FACE_FILES = ("det_10g.onnx", "2d106det.onnx")


@dataclass(frozen=True)
class CheckpointLayout:
    root: Path

    @property
    def unet(self) -> Path:
        return self.root / "latentsync_unet.pt"

    @property
    def whisper(self) -> Path:
        return self.root / "whisper" / "tiny.pt"

    @property
    def vae_dir(self) -> Path:
        return self.root / "sd-vae-ft-mse"

    @property
    def face_dir(self) -> Path:
        return self.root / "auxiliary" / "models" / "buffalo_l"

    def has_face_models(self) -> bool:
        return all((self.face_dir / f).is_file() for f in FACE_FILES)

    def require(self, path: Path, version: str) -> Path:
        if not path.is_file():
            raise CheckpointError(
                "checkpoint file is missing",
                path,
                hint=f"fetch the official weights with `fastsync download --version {version} --dir {self.root}`, "
                "or pass --random-weights to run with seeded random weights",
            )
        return path


def _hf_download(repo: str, filename: str, target_dir: Path) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, local_dir=target_dir))
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        raise CheckpointError(
            f"could not download {filename} from https://huggingface.co/{repo}: {exc}",
            target_dir / filename,
            hint="check the network (or HF_ENDPOINT / HF_TOKEN), or copy the file there by hand",
        ) from exc


def _download_face_models(layout: CheckpointLayout) -> None:
    if layout.has_face_models():
        return
    layout.face_dir.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(BUFFALO_L_URL, timeout=60) as response:
            archive = zipfile.ZipFile(io.BytesIO(response.read()))
    except Exception as exc:
        raise CheckpointError(
            f"could not download the InsightFace buffalo_l models from {BUFFALO_L_URL}: {exc}",
            layout.face_dir,
            hint="without them fastsync uses its embedded dlib landmarker (--face-backend dlib)",
        ) from exc
    for name in FACE_FILES:
        member = next((m for m in archive.namelist() if m.endswith(name)), None)
        if member is None:
            raise CheckpointError(f"{name} is not in the buffalo_l archive", layout.face_dir)
        write_atomically(layout.face_dir / name, archive.read(member))


def download(version: str, directory: Path, *, face_models: bool = True) -> CheckpointLayout:
    """Fetch every file `fastsync run` needs into `directory`, in the official layout."""
    layout = CheckpointLayout(Path(directory))
    repo = HF_REPOS[version]
    for filename in ("latentsync_unet.pt", "whisper/tiny.pt"):
        print(f"fetching {repo}/{filename}")
        _hf_download(repo, filename, layout.root)
    for filename in VAE_FILES:
        print(f"fetching {VAE_REPO}/{filename}")
        _hf_download(VAE_REPO, filename, layout.vae_dir)
    if face_models:
        print(f"fetching {BUFFALO_L_URL}")
        _download_face_models(layout)
    print(f"checkpoints ready in {layout.root}")
    return layout


# whisper-tiny's text-side dims as they stand in OpenAI's file (the encoder ignores them)
_WHISPER_TEXT_DIMS = dict(n_vocab=51865, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4)


def save_layout(root: Path, unet, whisper, vae) -> CheckpointLayout:
    """Write models in the official layout and formats, as `fastsync download` leaves them:
    `latentsync_unet.pt` ({"state_dict", "global_step"}, the UNet's own dtype), `whisper/tiny.pt`
    (OpenAI format: fp16, dims, encoder keys) and `sd-vae-ft-mse/` (diffusers). For tests and
    benchmarks that must exercise the real loading path but have no trained weights."""
    import dataclasses

    import torch

    layout = CheckpointLayout(Path(root))
    layout.root.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": unet.state_dict(), "global_step": 1}, layout.unet)
    dims = {**dataclasses.asdict(whisper.dims), **_WHISPER_TEXT_DIMS}
    state = {f"encoder.{k}": v.half() for k, v in whisper.state_dict().items()}
    layout.whisper.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": dims, "model_state_dict": state}, layout.whisper)
    vae.save_pretrained(layout.vae_dir)
    return layout
