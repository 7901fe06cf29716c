"""Golden parity: our UNet on the reference's seeded random checkpoint gives the reference's output."""

import pytest
import torch

from fastsync.config import UNetConfig
from fastsync.models.loading import load_unet
from fastsync.models.parity import REL_MAX_ERR_TOL, check_unet_case, relative_max_error

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny_files(golden_dir):
    files = {s: golden_dir / f"unet_tiny_{s}" for s in ("config.json", "unet.pt", "io.pt")}
    for path in files.values():
        assert path.is_file(), f"missing golden file {path}"
    return files


@pytest.fixture(scope="module")
def tiny(tiny_files):
    config = UNetConfig.from_json(tiny_files["config.json"])
    model = load_unet(tiny_files["unet.pt"], config)
    io = torch.load(tiny_files["io.pt"], weights_only=True)
    return model, io


def test_check_unet_case_passes(tiny_files):
    metrics = check_unet_case("tiny", tiny_files)
    assert [m.name for m in metrics] == ["rel_max_err"]
    assert metrics[0].passed, metrics[0].describe()


def test_golden_output_directly(tiny):
    model, io = tiny
    with torch.inference_mode():
        out = model(io["sample"], io["timestep"], io["encoder_hidden_states"])
    assert out.shape == io["output"].shape == (2, 4, 16, 16, 16)
    assert out.dtype == torch.float32
    # fp32 end to end; measured ~1.5e-6, the tolerance leaves room for other BLAS builds.
    assert relative_max_error(out, io["output"]) <= REL_MAX_ERR_TOL


def test_timestep_forms_agree(tiny):
    """0-dim, (1,) and (B,) timesteps and a Python int are the same call."""
    model, io = tiny
    sample, audio = io["sample"][:, :, :4], io["encoder_hidden_states"].view(2, 16, 50, 384)[:, :4]
    audio = audio.reshape(8, 50, 384)
    t = int(io["timestep"])
    with torch.inference_mode():
        outs = [
            model(sample, ts, audio) for ts in (torch.tensor(t), torch.tensor([t]), torch.tensor([t, t]), t)
        ]
    for other in outs[1:]:
        assert torch.equal(outs[0], other)
