"""The motion modules' temporal attention: SDPA's kernels against fastsync's short-sequence
Triton kernel, on the UNet's real shapes and strides (fp16, CFG pair x 16 frames at 512 px).

Each level's q, k, v are views of three (B*H*W, 16, inner) linear outputs, as in the model.
Also timed: one whole compiled motion module per backend, and the copy bandwidth that
bounds any kernel here (reading q, k, v and writing the output once).

    python -m bench.bench_temporal_attention --out bench/results/temporal_attention.json
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.common import cuda_time, environment, save
from fastsync.accel import short_attention
from fastsync.config import UNET_PRESETS
from fastsync.models.attention import _math_attention
from fastsync.models.motion_module import MotionModule, TemporalSelfAttention

# (name, sequences = CFG 2 x H x W, channels): heads 8, head width channels / 8
LEVELS = [("l0", 2 * 64 * 64, 320), ("l1", 2 * 32 * 32, 640), ("l2", 2 * 16 * 16, 1280), ("l3", 2 * 8 * 8, 1280)]
HEADS, FRAMES = 8, 16


def qkv(sequences, channels):
    g = torch.Generator(device="cuda").manual_seed(0)
    views = []
    for _ in range(3):
        x = torch.randn(sequences, FRAMES, channels, generator=g, device="cuda", dtype=torch.float16)
        views.append(x.view(sequences, FRAMES, HEADS, channels // HEADS).transpose(1, 2))
    return views


def sdpa_with(kernels):
    def run(q, k, v):
        with sdpa_kernel(kernels):
            return F.scaled_dot_product_attention(q, k, v)
    return run


def attention_variants():
    variants = {"sdpa_efficient": sdpa_with([SDPBackend.EFFICIENT_ATTENTION]),
                "sdpa_default": F.scaled_dot_product_attention,
                "math_compiled": torch.compile(_math_attention, fullgraph=True, dynamic=False)}
    for warps in (1, 2, 4):
        variants[f"triton_short_w{warps}"] = lambda q, k, v, w=warps: short_attention.launch(q, k, v, num_warps=w)
    variants["triton_short"] = short_attention.short_attention
    return variants


def measure_level(sequences, channels) -> dict:
    q, k, v = qkv(sequences, channels)
    exact = _math_attention(q.float(), k.float(), v.float())
    moved = 4 * q.numel() * q.element_size()  # read q, k, v; write the output
    row = {"bytes_moved": moved}
    flat = torch.empty(moved // 2, device="cuda", dtype=torch.float16)
    copy_s = cuda_time(lambda: flat.clone(), repeat=20)["median_s"]  # reads and writes `moved` bytes
    row["copy_floor_ms"] = round(copy_s * 1e3, 4)
    for name, fn in attention_variants().items():
        try:
            out = fn(q, k, v)
            t = cuda_time(lambda fn=fn: fn(q, k, v), repeat=20)["median_s"]
            row[name] = {"ms": round(t * 1e3, 4), "gb_per_s": round(moved / t / 1e9),
                         "max_abs_err_vs_fp32": float((out.float() - exact).abs().max())}
        except Exception as exc:  # a kernel that does not apply to a shape is a result, not a crash
            row[name] = {"error": str(exc).splitlines()[0][:160]}
    return row


def measure_motion_module(channels, size, backends) -> dict:
    cfg = UNET_PRESETS["stage2_512"].motion_module_kwargs
    module = MotionModule(channels, cfg).to(device="cuda", dtype=torch.float16).eval()
    x = torch.randn(2, channels, FRAMES, size, size, device="cuda", dtype=torch.float16)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    row, outputs = {}, {}
    for backend in backends:
        m = copy.deepcopy(module)
        for sub in m.modules():
            if isinstance(sub, TemporalSelfAttention):
                sub.backend = backend
        m.compile(fullgraph=True, dynamic=False)
        with torch.no_grad():
            outputs[backend] = m(x).float()
            t = cuda_time(lambda m=m: m(x), repeat=20)["median_s"]
        row[backend] = {"ms": round(t * 1e3, 4)}
    first = outputs[backends[0]]
    for backend in backends[1:]:
        row[backend]["max_abs_diff_vs_" + backends[0]] = float((outputs[backend] - first).abs().max())
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/temporal_attention.json"))
    args = parser.parse_args()
    backend = short_attention.register()
    results = {"environment": environment(), "levels": {}, "motion_module": {}}
    with torch.no_grad():
        for name, sequences, channels in LEVELS:
            results["levels"][name] = measure_level(sequences, channels)
            print(name, {k: v.get("ms", v.get("error")) if isinstance(v, dict) else v
                         for k, v in results["levels"][name].items()}, flush=True)
            save(results, args.out)
        for name, sequences, channels in LEVELS[:3]:
            size = int((sequences // 2) ** 0.5)
            results["motion_module"][name] = measure_motion_module(channels, size, ["sdpa-efficient", backend])
            print("motion module", name, results["motion_module"][name], flush=True)
            save(results, args.out)


if __name__ == "__main__":
    main()
