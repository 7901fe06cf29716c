"""The attention dispatch: backends agree, and the backend is chosen explicitly."""

import pytest
import torch

from fastsync.config import UNET_PRESETS
from fastsync.models import attention as attn
from fastsync.models.loading import random_unet

torch.set_num_threads(2)


def _qkv(dtype, lq=37, lk=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape_q, shape_kv = (2, 4, lq, 16), (2, 4, lk, 16)
    q = torch.randn(shape_q, generator=g).to(dtype)
    k = torch.randn(shape_kv, generator=g).to(dtype)
    v = torch.randn(shape_kv, generator=g).to(dtype)
    return q, k, v


def _exact(q, k, v):
    q, k, v = q.double(), k.double(), v.double()
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v


def test_math_equals_sdpa_fp32():
    q, k, v = _qkv(torch.float32)
    a = attn.attention(q, k, v, backend="math")
    b = attn.attention(q, k, v, backend="sdpa")
    assert a.shape == (2, 4, 37, 16) and a.dtype == torch.float32
    # fp32: both within a few ulps of the fp64 result; 1e-5 absolute on O(1) values.
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.double(), _exact(q, k, v), rtol=0, atol=1e-5)


def test_math_and_sdpa_bf16_close_to_exact():
    q, k, v = _qkv(torch.bfloat16, lq=64, lk=64, seed=1)
    exact = _exact(q, k, v)
    for backend in ("math", "sdpa"):
        out = attn.attention(q, k, v, backend=backend)
        assert out.dtype == torch.bfloat16
        # bf16 has 8 mantissa bits (relative step 2^-8 = 0.0039); allow a few roundings.
        torch.testing.assert_close(out.double(), exact, rtol=0, atol=3e-2)


def test_backend_selection_is_explicit_and_restored():
    assert attn.get_attention_backend() == "sdpa"
    with attn.attention_backend("math"):
        assert attn.get_attention_backend() == "math"
    assert attn.get_attention_backend() == "sdpa"
    attn.set_attention_backend("math")
    try:
        assert attn.get_attention_backend() == "math"
    finally:
        attn.set_attention_backend("sdpa")
    with pytest.raises(ValueError, match="unknown attention backend 'flash9'"):
        attn.set_attention_backend("flash9")
    with pytest.raises(ValueError):
        attn.attention(*_qkv(torch.float32), backend="nope")


def test_backend_is_used_by_the_model():
    """The whole tiny UNet under both backends: same function, and the switch really routes."""
    unet = random_unet(UNET_PRESETS["tiny"], seed=3)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 13, 2, 16, 16, generator=g)
    audio = torch.randn(2, 50, 384, generator=g)
    calls = []
    original = attn.BACKENDS["math"]
    attn.BACKENDS["math"] = lambda q, k, v: calls.append(q.shape) or original(q, k, v)
    try:
        with torch.no_grad(), attn.attention_backend("math"):
            a = unet(sample, torch.tensor(500), audio)
    finally:
        attn.BACKENDS["math"] = original
    with torch.no_grad():
        b = unet(sample, torch.tensor(500), audio)
    # 16 spatial transformers (down 3x2, mid 1, up 3x3) x (self + cross)
    # + 20 motion modules (down 4x2, up 4x3) x 2 temporal self-attentions
    assert len(calls) == 16 * 2 + 20 * 2
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * b.abs().max().item())
