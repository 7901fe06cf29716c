"""fastsync.accel.geglu (the fused GEGLU kernel) against the model's own GEGLU.

Truth is `GEGLU.forward` with `fused` off: cuBLAS-style GEMM with bias, chunk, value *
gelu(gate). In fp16 the fused kernel rounds value and gate as the GEMM's fp16 output is
rounded, so it differs by the GEMM's summation order only; with the model's scale of
inputs (LayerNorm output, weights of std 0.02 and more) outputs stay below ~4, and every
element must be within 4e-3 of the plain fp16 path (a few ulps), and nearer the fp32 truth
than a kernel that dropped the gate or the bias would be by orders of magnitude. The CPU
test runs the same kernel in Triton's interpreter (fp32: within 1e-5), where Triton is
installed; CI has none.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastsync.accel import geglu
from fastsync.models.attention import GEGLU

FP16_ATOL = 4e-3
# (tokens, width): the UNet's feed-forwards at 64x64, 32x32, 16x16 and 8x8 latents (a CFG
# pair of 16 frames), then odd sizes that need every mask.
SHAPES = [(2 * 16 * 64 * 64, 320), (2 * 16 * 32 * 32, 640), (2 * 16 * 16 * 16, 1280), (2 * 16 * 8 * 8, 1280),
          (100, 48)]


def module_and_input(tokens, width, *, device, dtype, seed=0):
    torch.manual_seed(seed)
    module = GEGLU(width, 4 * width)
    with torch.no_grad():
        module.proj.weight.normal_(0, 1.0 / width**0.5)
        module.proj.bias.normal_(0, 0.5)
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(tokens, width, generator=g, device=device, dtype=dtype)
    return module.to(device, dtype), x


@pytest.mark.requires_cuda
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_equals_the_module_in_fp16_on_cuda(shape):
    module, x = module_and_input(*shape, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        plain = module(x).float()
        fused = geglu.geglu(x, module.proj.weight, module.proj.bias)
        no_bias = geglu.geglu(x, module.proj.weight, torch.zeros_like(module.proj.bias))
    assert fused.shape == plain.shape and fused.dtype == torch.float16
    err = (fused.float() - plain).abs().max().item()
    assert err <= FP16_ATOL, err
    # The check can fail: the same kernel without the bias is far off.
    assert (no_bias.float() - plain).abs().max().item() > 100 * FP16_ATOL


@pytest.mark.requires_cuda
def test_kernel_inside_a_compiled_cuda_graph_region():
    """As fast mode runs it: the module's fused path in a torch.compile region, replayed
    from a CUDA graph, on a 3D token tensor."""
    from fastsync.accel.graphs import GraphedCall

    module, x = module_and_input(*SHAPES[1], device="cuda", dtype=torch.float16)
    with torch.no_grad():
        plain = module(x.view(32, -1, 640)).float()
    geglu.install(module)
    region = torch.compile(module, fullgraph=True)
    graph = GraphedCall(region, (x.view(32, -1, 640),))
    out = graph(x.view(32, -1, 640)).float()
    assert out.shape == plain.shape
    assert (out - plain).abs().max().item() <= FP16_ATOL


def test_install_sets_every_geglu_and_keeps_the_parameters():
    from fastsync.models.attention import FeedForward

    model = torch.nn.Sequential(FeedForward(16), FeedForward(32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert geglu.install(model) == 2
    assert all(m.net[0].fused for m in model)
    assert before.keys() == model.state_dict().keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cpu_tensors_are_refused_with_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, w, b = torch.zeros(4, 8), torch.zeros(32, 8), torch.zeros(32)
    with pytest.raises(ValueError, match="CUDA tensors only"):
        geglu.launch(x, w, b)


def test_bad_shapes_are_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # past the device check: the shape checks come next
    x = torch.zeros(4, 8)
    with pytest.raises(ValueError, match="weight must be"):
        geglu.launch(x, torch.zeros(32, 9), torch.zeros(32))
    with pytest.raises(ValueError, match="bias must be"):
        geglu.launch(x, torch.zeros(32, 8), torch.zeros(16))


INTERPRETED_CHECK = """
import torch
from fastsync.accel import geglu
from test_geglu import module_and_input
for shape in [(300, 64), (100, 48)]:
    module, x = module_and_input(*shape, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        plain = module(x)
        fused = geglu.launch(x, module.proj.weight, module.proj.bias,
                             config=geglu.TileConfig(64, 32, 32, 2, 4, 1))
    err = (fused - plain).abs().max().item()
    print(shape, err)
    assert err <= 1e-5 * plain.abs().max().item(), (shape, err)
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed (CI has none)")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter test is for machines without a GPU")
def test_kernel_equals_the_module_in_the_triton_interpreter(tmp_path):
    """In a fresh process: Triton reads TRITON_INTERPRET when it is first imported."""
    tests_dir = Path(__file__).parent
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([str(tests_dir), *sys.path]))
    proc = subprocess.run([sys.executable, "-c", INTERPRETED_CHECK], env=env, capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("(") == 2  # both shapes ran
