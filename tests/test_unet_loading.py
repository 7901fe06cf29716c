"""Checkpoint loading: the official layout round-trips, mismatches are reported by name."""

import dataclasses
import logging

import pytest
import torch

from fastsync.config import UNET_PRESETS
from fastsync.errors import CheckpointError
from fastsync.models.loading import load_unet, random_unet

torch.set_num_threads(2)

TINY = UNET_PRESETS["tiny"]


@pytest.fixture(scope="module")
def unet():
    return random_unet(TINY, seed=0)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 13, 4, 32, 32, generator=g)  # CFG pair, 4 frames, 32x32 latents
    audio = torch.randn(2 * 4, 50, 384, generator=g)
    return sample, torch.tensor(601), audio


@pytest.fixture(scope="module")
def reference_output(unet, inputs):
    with torch.inference_mode():
        return unet(*inputs)


def _save_official(unet, path, state=None):
    state = unet.state_dict() if state is None else state
    torch.save({"state_dict": state, "global_step": 1}, path)
    return path


def test_official_layout_round_trip(unet, inputs, reference_output, tmp_path):
    path = _save_official(unet, tmp_path / "latentsync_unet.pt")
    loaded = load_unet(path, TINY)
    assert not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    with torch.inference_mode():
        out = loaded(*inputs)
    assert out.shape == (2, 4, 4, 32, 32)
    # identical weights and identical ops: bitwise equal
    assert torch.equal(out, reference_output)


def test_bare_and_module_prefixed_state_dicts(unet, tmp_path):
    state = unet.state_dict()
    torch.save(state, tmp_path / "bare.pt")
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "ddp.pt")
    for name in ("bare.pt", "ddp.pt"):
        loaded = load_unet(tmp_path / name, TINY)
        for key, value in loaded.state_dict().items():
            assert torch.equal(value, state[key]), (name, key)


def test_legacy_format_falls_back_with_warning(unet, tmp_path, caplog):
    path = tmp_path / "legacy.pt"
    torch.save({"state_dict": unet.state_dict()}, path, _use_new_zipfile_serialization=False)
    with caplog.at_level(logging.WARNING, logger="fastsync.models.loading"):
        loaded = load_unet(path, TINY)
    assert "not a zip-format checkpoint" in caplog.text
    assert torch.equal(loaded.conv_out.weight, unet.conv_out.weight)


def test_dtype_and_zero_init_layers_are_random(unet, tmp_path):
    loaded = load_unet(_save_official(unet, tmp_path / "u.pt"), TINY, dtype=torch.bfloat16)
    assert {t.dtype for t in loaded.state_dict().values()} == {torch.bfloat16}
    # random_unet deliberately does not copy the reference's zero init (see its docstring)
    proj_out = unet.down_blocks[0].motion_modules[0].temporal_transformer.proj_out.weight
    assert unet.conv_out.weight.abs().min() >= 0 and unet.conv_out.weight.abs().max() > 0
    assert unet.conv_in.weight.abs().max() > 0 and proj_out.abs().max() > 0


def test_random_unet_is_seeded():
    a, b, c = random_unet(TINY, seed=5), random_unet(TINY, seed=5), random_unet(TINY, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.conv_in.weight, c.conv_in.weight)
    assert not torch.equal(a.conv_norm_out.weight, c.conv_norm_out.weight)


def test_missing_and_extra_key_raise_checkpoint_error(unet, tmp_path):
    state = dict(unet.state_dict())
    missing_key = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    del state[missing_key]
    state["mid_block.attentions.0.bogus.weight"] = torch.zeros(3)
    state["conv_in.bias"] = torch.zeros(7)  # shape mismatch
    path = _save_official(unet, tmp_path / "broken_unet.pt", state)
    with pytest.raises(CheckpointError) as info:
        load_unet(path, TINY)
    message = str(info.value)
    assert str(path) in message
    assert missing_key in message
    assert "mid_block.attentions.0.bogus.weight" in message
    assert "conv_in.bias: expected [32], found [7]" in message


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_unet(tmp_path / "nope.pt", TINY)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_unet(junk, TINY)
    torch.save({"weights": [1, 2, 3]}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="expected a state dict"):
        load_unet(tmp_path / "odd.pt", TINY)


def test_unsupported_config_values_are_rejected():
    with pytest.raises(ValueError, match="resnet_time_scale_shift 'scale_shift'"):
        random_unet(dataclasses.replace(TINY, resnet_time_scale_shift="scale_shift"))
    with pytest.raises(ValueError, match="act_fn 'mish'"):
        random_unet(dataclasses.replace(TINY, act_fn="mish"))


def test_bad_inputs_say_what_is_expected(unet, inputs):
    sample, t, audio = inputs
    with pytest.raises(ValueError, match=r"encoder_hidden_states must be \(B\*F = 8"):
        unet(sample, t, audio[:4])
    with pytest.raises(ValueError, match="24 rows"):
        unet(sample[:1, :, :1].expand(1, 13, 25, 32, 32), t, audio[:1].expand(25, 50, 384))


def test_odd_latent_size_keeps_the_input_size(unet):
    """Sides not divisible by 8: the decoder upsamples to each skip's size, as the reference does."""
    sample = torch.randn(1, 13, 2, 20, 12)
    with torch.inference_mode():
        out = unet(sample, 10, torch.randn(2, 50, 384))
    assert out.shape == (1, 4, 2, 20, 12)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_half_precision_follows_the_input(unet, inputs, reference_output, tmp_path, dtype, tol):
    """Weights and inputs in half precision: output in that dtype, close to fp32.

    Tolerances are relative to max|output|: measured 2.2e-3 (fp16, 10 mantissa bits) and
    1.9e-2 (bf16, 7 bits) on this model; norms and softmax accumulate in fp32 internally.
    """
    half = load_unet(_save_official(unet, tmp_path / "u.pt"), TINY, dtype=dtype)
    sample, t, audio = inputs
    with torch.inference_mode():
        out = half(sample.to(dtype), t, audio.to(dtype))
    assert out.dtype == dtype
    err = (out.float() - reference_output).abs().max() / reference_output.abs().max()
    assert err <= tol


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_loading_onto_the_gpu_converts_exactly_as_the_cpu_does(unet, tmp_path, dtype):
    """Loading straight onto the GPU gives the bits of loading on the CPU and moving after."""
    path = _save_official(unet, tmp_path / "u.pt")
    on_gpu = load_unet(path, TINY, device="cuda", dtype=dtype).state_dict()
    on_cpu = load_unet(path, TINY, dtype=dtype).state_dict()
    assert on_gpu.keys() == on_cpu.keys()
    for name, tensor in on_gpu.items():
        assert tensor.is_cuda and tensor.dtype == on_cpu[name].dtype, name
        assert torch.equal(tensor.cpu(), on_cpu[name]), name
