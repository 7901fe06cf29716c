"""Checkpoint folders in the official layout: loading, missing files, `fastsync download`.

The folder is built here with tiny seeded weights in the official formats:
`latentsync_unet.pt` ({"state_dict", "global_step"}), `whisper/tiny.pt` (OpenAI format,
fp16, encoder and decoder keys) and `sd-vae-ft-mse/` (diffusers `save_pretrained`). The
weights use the seeds `--random-weights` uses, so a job that loads the folder must produce
exactly the video that a `--random-weights` job produces.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from job_clips import decode_rgb, expected_frames, source_frames, trim_wav, wav_samples, write_clip

from fastsync import checkpoints, cli
from fastsync.checkpoints import CheckpointLayout
from fastsync.components import load_vae, random_vae
from fastsync.config import unet_config_for
from fastsync.engine import EngineOptions, load_components
from fastsync.errors import CheckpointError
from fastsync.models.loading import load_unet, random_unet
from fastsync.models.whisper import TINY, load_whisper_encoder, random_whisper_encoder

torch.set_num_threads(2)

SEED = 0  # EngineOptions.seed: what --random-weights builds
CONFIG = unet_config_for("1.6", "tiny")
def add_decoder_stand_in(path: Path) -> None:
    """The official tiny.pt also holds the decoder (its embedding alone is 51865 x 384): a
    small stand-in whose keys the loader must ignore."""
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model_state_dict"]["decoder.token_embedding.weight"] = torch.zeros(8, 384, dtype=torch.float16)
    checkpoint["model_state_dict"]["decoder.ln.weight"] = torch.ones(384, dtype=torch.float16)
    torch.save(checkpoint, path)


@pytest.fixture(scope="module")
def models():
    return dict(unet=random_unet(CONFIG, seed=SEED), whisper=random_whisper_encoder(seed=SEED),
                vae=random_vae("tiny", seed=SEED))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, models) -> Path:
    root = tmp_path_factory.mktemp("checkpoints")
    layout = checkpoints.save_layout(root, models["unet"], models["whisper"], models["vae"])
    add_decoder_stand_in(layout.whisper)
    return root


@pytest.fixture(scope="module")
def clip(tmp_path_factory, assets_dir):
    tmp = tmp_path_factory.mktemp("clip")
    video = write_clip(tmp / "face.mp4", source_frames(assets_dir / "demo1_video.mp4", 8, size=(540, 960)))
    audio = trim_wav(assets_dir / "demo2_audio.wav", tmp / "speech.wav", 0.3)
    return video, audio


def assert_same_state(loaded: torch.nn.Module, saved: torch.nn.Module) -> None:
    a, b = loaded.state_dict(), saved.state_dict()
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k].float(), b[k].float())]
    assert not different, f"tensors changed by the round trip: {different[:5]}"


def test_layout_matches_the_official_names(tiny_dir):
    files = sorted(str(p.relative_to(tiny_dir)) for p in tiny_dir.rglob("*") if p.is_file())
    assert files == ["latentsync_unet.pt", "sd-vae-ft-mse/config.json",
                     "sd-vae-ft-mse/diffusion_pytorch_model.safetensors", "whisper/tiny.pt"]
    raw = torch.load(tiny_dir / "whisper" / "tiny.pt", weights_only=True)
    assert {v.dtype for v in raw["model_state_dict"].values()} == {torch.float16}


def test_each_loader_gives_back_the_saved_model(tiny_dir, models):
    layout = CheckpointLayout(tiny_dir)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        unet = load_unet(layout.unet, CONFIG)
        assert_same_state(unet, models["unet"])
        sample = torch.randn(2, 13, 2, 16, 16, generator=g)  # CFG pair, 2 frames, 128 px faces
        audio = torch.randn(2 * 2, 50, 384, generator=g)
        t = torch.tensor(501)
        assert torch.equal(unet(sample, t, audio), models["unet"](sample, t, audio))

        whisper = load_whisper_encoder(layout.whisper)
        assert whisper.dims == TINY
        assert_same_state(whisper, models["whisper"])  # the random encoder is fp16-exact
        mel = torch.randn(1, 80, 3000, generator=g)
        assert torch.equal(whisper(mel), models["whisper"](mel))

        vae = load_vae(layout.vae_dir)
        assert_same_state(vae, models["vae"])
        assert vae.config.scaling_factor == 0.18215 and vae.config.shift_factor == 0.0
        pixels = torch.rand(1, 3, 128, 128, generator=g) * 2 - 1
        mean = vae.encode(pixels).latent_dist.mean
        assert torch.equal(mean, models["vae"].encode(pixels).latent_dist.mean)
        assert torch.equal(vae.decode(mean).sample, models["vae"].decode(mean).sample)


def test_engine_loads_the_folder(tiny_dir, models):
    options = EngineOptions(checkpoint_dir=tiny_dir, model_size="tiny", device="cpu", face_backend="dlib",
                            mode="reference")
    components = load_components(options)
    assert_same_state(components.unet, models["unet"])
    assert_same_state(components.whisper, models["whisper"])
    assert_same_state(components.vae, models["vae"])
    assert options.resolution == 128 and tuple(components.mask.shape) == (128, 128)


def run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    return code, out.getvalue()


def test_run_with_checkpoint_dir_equals_random_weights_run(tiny_dir, clip, tmp_path):
    """The loading path end to end: same weights, same video, bit for bit."""
    video, audio = clip
    common = ["run", "--video", str(video), "--audio", str(audio), "--model-size", "tiny", "--device", "cpu",
              "--steps", "2", "--face-backend", "dlib"]
    loaded, built = tmp_path / "loaded.mp4", tmp_path / "random.mp4"
    code, stdout = run_cli([*common, "--output", str(loaded), "--checkpoint-dir", str(tiny_dir)])
    assert code == 0 and f"-> {loaded}" in stdout
    code, _ = run_cli([*common, "--output", str(built), "--random-weights"])
    assert code == 0
    frames_loaded, frames_built = decode_rgb(loaded), decode_rgb(built)
    assert len(frames_loaded) == expected_frames(wav_samples(audio)) == len(frames_built)
    for i, (a, b) in enumerate(zip(frames_loaded, frames_built)):
        assert np.array_equal(a, b), f"frame {i} differs between loaded and in-memory weights"


# -- missing or mismatched files -----------------------------------------------------------------


def partial_copy(tiny_dir: Path, dest: Path, leave_out: str) -> Path:
    for name in ("latentsync_unet.pt", "whisper", "sd-vae-ft-mse"):
        if name != leave_out:
            (dest / name).symlink_to(tiny_dir / name)
    return dest


@pytest.mark.parametrize("leave_out, missing", [("latentsync_unet.pt", "latentsync_unet.pt"),
                                                 ("whisper", "whisper/tiny.pt")])
def test_missing_file_names_it_and_the_download_command(tiny_dir, clip, tmp_path, capsys, leave_out, missing):
    root = partial_copy(tiny_dir, tmp_path, leave_out)
    with pytest.raises(CheckpointError) as exc:
        load_components(EngineOptions(checkpoint_dir=root, model_size="tiny", device="cpu"))
    assert str(root / missing) in str(exc.value)
    assert f"fastsync download --version 1.6 --dir {root}" in str(exc.value)

    video, audio = clip
    output = tmp_path / "out.mp4"
    code = cli.main(["run", "--video", str(video), "--audio", str(audio), "--output", str(output),
                     "--checkpoint-dir", str(root), "--model-size", "tiny", "--device", "cpu", "--version", "1.5"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"fastsync: error: {root / missing}: checkpoint file is missing" in err
    assert f"fastsync download --version 1.5 --dir {root}" in err
    assert not output.exists()


def test_tiny_folder_with_the_full_config_names_the_mismatch(tiny_dir):
    with pytest.raises(CheckpointError) as exc:
        load_components(EngineOptions(checkpoint_dir=tiny_dir, model_size="full", device="cpu"))
    message = str(exc.value)
    assert str(tiny_dir / "latentsync_unet.pt") in message and "does not match the UNet config" in message
    assert "shape mismatches" in message


# -- fastsync download ---------------------------------------------------------------------------


def buffalo_zip() -> bytes:
    """A stand-in for InsightFace's buffalo_l.zip: the two files we need among others."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("1k3d68.onnx", "2d106det.onnx", "det_10g.onnx", "genderage.onnx", "w600k_r50.onnx"):
            archive.writestr(f"buffalo_l/{name}", f"onnx bytes of {name}")
    return buffer.getvalue()


class FakeHub:
    """hf_hub_download serving files from a local folder, recording what was asked."""

    def __init__(self, files: dict[tuple[str, str], Path], error: Exception | None = None):
        self.files, self.error, self.calls = files, error, []

    def __call__(self, repo_id: str, filename: str, *, local_dir=None, **kwargs) -> str:
        self.calls.append((repo_id, filename))
        if self.error is not None:
            raise self.error
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.files[(repo_id, filename)], target)
        return str(target)


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def hub_files(tiny_dir: Path, repo: str) -> dict[tuple[str, str], Path]:
    return {(repo, "latentsync_unet.pt"): tiny_dir / "latentsync_unet.pt",
            (repo, "whisper/tiny.pt"): tiny_dir / "whisper" / "tiny.pt",
            ("stabilityai/sd-vae-ft-mse", "config.json"): tiny_dir / "sd-vae-ft-mse" / "config.json",
            ("stabilityai/sd-vae-ft-mse", "diffusion_pytorch_model.safetensors"):
                tiny_dir / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors"}


@pytest.mark.parametrize("version", ["1.5", "1.6"])
def test_download_writes_the_official_layout(tiny_dir, tmp_path, monkeypatch, capsys, models, version):
    import huggingface_hub

    repo = f"ByteDance/LatentSync-{version}"
    hub = FakeHub(hub_files(tiny_dir, repo))
    urls = []

    def urlopen(url, timeout=None):
        urls.append(url)
        return FakeResponse(buffalo_zip())

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    monkeypatch.setattr(checkpoints.urllib.request, "urlopen", urlopen)
    root = tmp_path / "checkpoints"
    assert cli.main(["download", "--version", version, "--dir", str(root)]) == 0
    assert f"checkpoints ready in {root}" in capsys.readouterr().out

    assert hub.calls == [(repo, "latentsync_unet.pt"), (repo, "whisper/tiny.pt"),
                         ("stabilityai/sd-vae-ft-mse", "config.json"),
                         ("stabilityai/sd-vae-ft-mse", "diffusion_pytorch_model.safetensors")]
    assert urls == [checkpoints.BUFFALO_L_URL]
    layout = CheckpointLayout(root)
    for (_, filename), source in hub_files(tiny_dir, repo).items():
        target = {"latentsync_unet.pt": layout.unet, "whisper/tiny.pt": layout.whisper}.get(
            filename, layout.vae_dir / filename)
        assert target.read_bytes() == source.read_bytes(), filename
    for name in ("det_10g.onnx", "2d106det.onnx"):
        assert (layout.face_dir / name).read_text() == f"onnx bytes of {name}"
    assert layout.has_face_models()
    assert not list(layout.face_dir.glob("*.part"))  # atomic writes left no temporary file

    # what was downloaded is what `run --checkpoint-dir` loads
    components = load_components(EngineOptions(version=version, checkpoint_dir=root, model_size="tiny",
                                               device="cpu", face_backend="dlib", mode="reference"))
    assert_same_state(components.unet, models["unet"])


def test_download_without_network_names_the_file_and_the_repo(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    hub = FakeHub({}, error=OSError("Temporary failure in name resolution"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    root = tmp_path / "checkpoints"
    assert cli.main(["download", "--dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"fastsync: error: {root / 'latentsync_unet.pt'}: could not download latentsync_unet.pt" in err
    assert "https://huggingface.co/ByteDance/LatentSync-1.6" in err and "name resolution" in err
    assert hub.calls == [("ByteDance/LatentSync-1.6", "latentsync_unet.pt")]  # stops at the first failure


def test_face_model_download_failure_names_the_url(tiny_dir, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def urlopen(url, timeout=None):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", FakeHub(hub_files(tiny_dir, "ByteDance/LatentSync-1.6")))
    monkeypatch.setattr(checkpoints.urllib.request, "urlopen", urlopen)
    root = tmp_path / "checkpoints"
    assert cli.main(["download", "--dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert checkpoints.BUFFALO_L_URL in err and "unreachable" in err and "--face-backend dlib" in err
    assert CheckpointLayout(root).unet.is_file()  # what did download is kept
