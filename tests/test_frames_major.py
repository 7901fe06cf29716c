"""Frames-major motion modules (TemporalTransformer.frames_major) give the plain values.

The plain path transposes every feature map to (B, H, W, F, C) tokens; the frames-major one
keeps the (B, F, H*W, C) order of channels_last_3d memory and lets attention read each
(b, position) sequence with strides. Same per-token arithmetic, so on the CPU in fp32 the
two agree to summation order; the Triton kernel's 5D entry is checked in its interpreter
and on CUDA.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastsync.accel.deepcache import DeepCache
from fastsync.accel.setup import frames_major_motion, keep_channels_last_between_blocks
from fastsync.config import UNET_PRESETS
from fastsync.models.attention import _math_attention
from fastsync.models.loading import random_unet
from fastsync.models.motion_module import TemporalTransformer

torch.set_num_threads(2)
CL = torch.channels_last_3d


def _close(a, b, rel=1e-5):
    return (a - b).abs().max().item() <= rel * b.abs().max().item()


@pytest.mark.parametrize("layout", [CL, torch.contiguous_format])
def test_motion_module_equals_the_plain_path(layout):
    unet = random_unet(UNET_PRESETS["tiny"], seed=3).eval()
    module = next(m for m in unet.modules() if isinstance(m, TemporalTransformer))
    channels = module.proj_out.out_features
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, channels, 5, 6, 7, generator=g).contiguous(memory_format=layout)
    with torch.no_grad():
        plain = module(x)
        module.frames_major = True
        fast = module(x)
    assert fast.shape == plain.shape
    assert _close(fast, plain), (fast - plain).abs().max()
    if layout is CL:
        assert fast.is_contiguous(memory_format=CL)  # hands channels_last_3d on, as keep_input_layout does
    # the check can fail: frames swapped inside the sequences change the result
    with torch.no_grad():
        assert not _close(module(x.flip(2)).flip(2), plain)


def test_unet_forward_equals_the_plain_path():
    unet = random_unet(UNET_PRESETS["tiny"], seed=4).eval().to(memory_format=torch.channels_last)
    keep_channels_last_between_blocks(unet)
    g = torch.Generator().manual_seed(2)
    sample = torch.randn(2, 13, 4, 32, 32, generator=g).contiguous(memory_format=CL)
    audio = torch.randn(8, 50, 384, generator=g)
    with torch.no_grad():
        plain = DeepCache(unet, 3)(sample, torch.tensor(400), audio, 0)
        assert frames_major_motion(unet) > 0
        fast = DeepCache(unet, 3)(sample, torch.tensor(400), audio, 0)
    assert _close(fast, plain), (fast - plain).abs().max()


def frames_major_qkv(batch, frames, sites, heads, width, *, device, dtype, seed=0):
    """q, k, v as TemporalSelfAttention._frames_major makes them: (B, S, nh, F, hd) views of
    three (B, F, S, nh * hd) projections."""
    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(batch, frames, sites, heads * width, generator=g, device=device, dtype=dtype)
            .view(batch, frames, sites, heads, width).permute(0, 2, 3, 1, 4) for _ in range(3)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("shape", [(2, 16, 64 * 64, 8, 40), (2, 16, 8 * 8, 8, 160), (2, 5, 7, 3, 24)])
def test_short_attention_takes_frames_major_tokens_on_cuda(shape):
    from fastsync.accel import short_attention

    q, k, v = frames_major_qkv(*shape, device="cuda", dtype=torch.float16)
    out = short_attention.short_attention(q, k, v)
    assert out.shape == q.shape
    assert out.permute(0, 3, 1, 2, 4).is_contiguous()  # (B, F, S, nh, hd) memory: the caller's view back
    exact = _math_attention(q.float(), k.float(), v.float())
    assert (out.float() - exact).abs().max().item() <= 4e-3  # as tests/test_short_attention.py


@pytest.mark.requires_cuda
def test_compiled_motion_module_on_cuda_equals_the_plain_path():
    """fp16 in a compiled region with the Triton kernel, as fast mode runs it, against the
    plain path of the same module (the 4D kernel entry)."""
    from fastsync.accel import short_attention

    backend = short_attention.register()
    unet = random_unet(UNET_PRESETS["tiny"], seed=3).eval().to("cuda", torch.float16)
    module = next(m for m in unet.modules() if isinstance(m, TemporalTransformer))
    for m in module.modules():
        if hasattr(m, "backend"):
            m.backend = backend
    module.keep_input_layout = True
    x = torch.randn(2, module.proj_out.out_features, 16, 16, 16, device="cuda",
                    dtype=torch.float16).contiguous(memory_format=CL)
    with torch.no_grad():
        plain = module(x).float()
        module.frames_major = True
        fast = torch.compile(module, fullgraph=True)(x).float()
    assert (fast - plain).abs().max().item() <= 4e-3 * max(1.0, plain.abs().max().item())


INTERPRETED_CHECK = """
import torch
from fastsync.accel import short_attention
from fastsync.models.attention import _math_attention
from test_frames_major import frames_major_qkv
for shape in [(2, 16, 6, 4, 40), (2, 5, 7, 3, 24)]:
    q, k, v = frames_major_qkv(*shape, device="cpu", dtype=torch.float32)
    out = short_attention.short_attention(q, k, v)
    err = (out - _math_attention(q, k, v)).abs().max().item()
    print(shape, err)
    assert out.permute(0, 3, 1, 2, 4).is_contiguous()
    assert err <= 1e-5, (shape, err)
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed (CI has none)")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter test is for machines without a GPU")
def test_short_attention_takes_frames_major_tokens_in_the_triton_interpreter(tmp_path):
    """In a fresh process: Triton reads TRITON_INTERPRET when it is first imported."""
    tests_dir = Path(__file__).parent
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(tests_dir), *sys.path]))
    proc = subprocess.run([sys.executable, "-c", INTERPRETED_CHECK], env=env, capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("(") == 2  # both shapes ran
