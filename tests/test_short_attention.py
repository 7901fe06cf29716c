"""fastsync.accel.short_attention (the motion modules' Triton kernel) against the math path.

Truth is `_math_attention` in fp32 on the same inputs. In fp16 the kernel rounds its
output (unit roundoff 4.9e-4) and the softmax weights before p v, as SDPA's fused kernels
do; with unit-variance inputs the outputs are below ~3 in magnitude, so every element
must be within 4e-3 of the truth (about 4 ulps at 2), measured against SDPA's own error on
the same inputs, which must be of the same size. The CPU tests run the same kernel in
Triton's interpreter (fp32: within 1e-5), where Triton is installed; CI has no Triton, and
the CUDA tests ran on an H200 (torch 2.11).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastsync.accel import short_attention
from fastsync.models.attention import _math_attention

FP16_ATOL = 4e-3
# (sequences, heads, frames, head width): the UNet's levels at 64x64 latents (heads 8,
# width 40/80/160), then a short sequence and an odd width that need padding and masks.
SHAPES = [(2 * 64 * 64, 8, 16, 40), (2 * 32 * 32, 8, 16, 80), (2 * 16 * 16, 8, 16, 160), (7, 3, 5, 24)]


def model_layout_qkv(sequences, heads, frames, width, *, device, dtype, seed=0):
    """q, k, v as the model makes them: head views of three (N, F, heads * width) projections."""
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(3):
        x = torch.randn(sequences, frames, heads * width, generator=g, device=device, dtype=dtype)
        out.append(x.view(sequences, frames, heads, width).transpose(1, 2))
    return out


def _exact(q, k, v):
    return _math_attention(q.float(), k.float(), v.float())


@pytest.mark.requires_cuda
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_equals_math_in_fp16_on_cuda(shape):
    q, k, v = model_layout_qkv(*shape, device="cuda", dtype=torch.float16)
    out = short_attention.short_attention(q, k, v)
    assert out.shape == q.shape and out.dtype == torch.float16
    assert out.transpose(1, 2).is_contiguous()  # tokens-major memory: the caller's flatten is a view
    exact = _exact(q, k, v)
    sdpa_err = (F.scaled_dot_product_attention(q, k, v).float() - exact).abs().max().item()
    err = (out.float() - exact).abs().max().item()
    assert err <= FP16_ATOL, (err, sdpa_err)
    assert sdpa_err <= FP16_ATOL  # the bound is of SDPA's own size, not loose
    # the check can fail: a kernel that ignored the key mask or a head would be far off
    shifted = short_attention.short_attention(q, k.roll(1, dims=1), v)
    assert (shifted.float() - exact).abs().max().item() > 10 * FP16_ATOL


def _builds(kernel) -> int:
    """How many binaries Triton has built for `kernel` (its per-device caches)."""
    caches = getattr(kernel, "device_caches", None)
    if caches is None:
        pytest.skip("this Triton keeps its kernel cache elsewhere")
    return sum(len(entry[0]) for entry in caches.values())


@pytest.mark.requires_cuda
def test_a_short_last_chunk_reuses_the_16_frame_build():
    """A job's last chunk has 1-15 frames: the kernel built for 16 must serve it, exactly,
    rather than compile mid-job."""
    _, kernel = short_attention._kernel()
    q, k, v = model_layout_qkv(8, 8, 16, 40, device="cuda", dtype=torch.float16)
    short_attention.short_attention(q, k, v)
    built = _builds(kernel)
    for length in (1, 2, 5, 11, 15):
        q, k, v = model_layout_qkv(8, 8, length, 40, device="cuda", dtype=torch.float16, seed=length)
        err = (short_attention.short_attention(q, k, v).float() - _exact(q, k, v)).abs().max().item()
        assert err <= FP16_ATOL, (length, err)
    assert _builds(kernel) == built


@pytest.mark.requires_cuda
def test_kernel_inside_a_compiled_cuda_graph_region():
    """As fast mode runs it: in a torch.compile region, replayed from a CUDA graph."""
    from fastsync.accel.graphs import GraphedCall

    q, k, v = model_layout_qkv(*SHAPES[0], device="cuda", dtype=torch.float16)
    region = torch.compile(lambda q, k, v: short_attention.short_attention(q, k, v) * 2, fullgraph=True)
    graph = GraphedCall(region, (q, k, v))
    q2, k2, v2 = model_layout_qkv(*SHAPES[0], device="cuda", dtype=torch.float16, seed=1)
    out = graph(q2.contiguous(), k2.contiguous(), v2.contiguous()).float()
    assert (out - 2 * _exact(q2, k2, v2)).abs().max().item() <= 2 * FP16_ATOL


def test_cpu_tensors_are_refused_with_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.zeros(1, 1, 16, 8)
    with pytest.raises(ValueError, match="CUDA tensors only"):
        short_attention.launch(q, q, q)


def test_long_sequences_and_cross_attention_are_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # past the device check: the shape checks come next
    long = torch.zeros(1, 1, short_attention.MAX_SEQUENCE + 1, 8)
    with pytest.raises(ValueError, match="at most"):
        short_attention.launch(long, long, long)
    q, kv = torch.zeros(1, 1, 16, 8), torch.zeros(1, 1, 50, 8)
    with pytest.raises(ValueError, match="self-attention only"):
        short_attention.launch(q, kv, kv)


INTERPRETED_CHECK = """
import torch
from fastsync.accel import short_attention
from test_short_attention import _exact, model_layout_qkv
for shape in [(6, 8, 16, 40), (7, 3, 5, 24)]:
    q, k, v = model_layout_qkv(*shape, device="cpu", dtype=torch.float32)
    err = (short_attention.short_attention(q, k, v) - _exact(q, k, v)).abs().max().item()
    print(shape, err)
    assert err <= 1e-5, (shape, err)
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed (CI has none)")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter test is for machines without a GPU")
def test_kernel_equals_math_in_the_triton_interpreter(tmp_path):
    """In a fresh process: Triton reads TRITON_INTERPRET when it is first imported, and in a
    whole test session something may have imported it already."""
    tests_dir = Path(__file__).parent
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([str(tests_dir), *sys.path]))
    proc = subprocess.run([sys.executable, "-c", INTERPRETED_CHECK], env=env, capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("(") == 2  # both shapes ran
