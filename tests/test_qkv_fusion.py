"""bench/qkv_fusion.py, the stacked q/k/v candidate: the same output as the plain UNet."""

from __future__ import annotations

import torch

from bench.qkv_fusion import fuse_qkv, self_attentions
from fastsync.config import UNET_PRESETS
from fastsync.models.loading import random_unet


def _inputs(frames=2, size=16):
    g = torch.Generator().manual_seed(3)
    sample = torch.randn(2, 13, frames, size, size, generator=g)
    audio = torch.randn(2 * frames, 50, 384, generator=g)
    return sample, torch.tensor(501), audio


def test_fused_unet_equals_plain():
    plain = random_unet(UNET_PRESETS["tiny"], seed=0).eval()
    fused = random_unet(UNET_PRESETS["tiny"], seed=0).eval()
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    n = fuse_qkv(fused)
    assert n == len(self_attentions(plain)) > 0
    args = _inputs()
    separate_calls = []  # the fused path must not fall back to the three projections
    for attn in self_attentions(fused):
        attn.to_q.register_forward_hook(lambda *_: separate_calls.append(1))
    with torch.no_grad():
        expected, got = plain(*args), fused(*args)
    assert not separate_calls
    # the same products summed in the same order per output column: fp32 rounding only
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the checkpoint's names and values are still there, now views of the stacked weight
    state = fused.state_dict()
    for name, value in before.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0)
    attn = self_attentions(fused)[0]
    assert attn.to_k.weight.data_ptr() == attn.to_qkv.weight[attn.to_q.out_features:].data_ptr()


def test_cross_attention_keeps_its_own_projections():
    fused = random_unet(UNET_PRESETS["tiny"], seed=0).eval()
    fuse_qkv(fused)
    cross = [m.attn2 for m in fused.modules() if hasattr(m, "attn2")]
    assert cross and not any(hasattr(m, "to_qkv") for m in cross)
