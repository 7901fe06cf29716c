"""The VAE's share of one 16-frame chunk at 512 px, full-size random weights, fp16.

A chunk encodes 32 frames (the masked and the reference faces, one batch) and decodes 16,
through `ChunkDenoiser._encode` / `_decode` exactly as a job calls them, with channels_last
weights and compiled regions. Each micro-batch size is timed
side by side with its peak GPU memory: fast mode's 4 bounds the job's peak, and larger
ones show what that bound costs.

`--regions` compares what is compiled: `resnets` (each ResnetBlock2D, fast mode's until
2026-12-04), `blocks` (each down, mid and up block, so the samplers and the mid-block
attention are compiled too) and `whole` (the encoder and the decoder as one graph each, the
heads included); a `+gn` suffix has the compiled norms computed from per-channel moments
(fastsync.accel.group_norm). Fast mode is `whole+gn`.
`--top-ops N` adds each variant's heaviest CUDA kernels and how much of the wall they
cover (the rest is the GPU waiting on the host).

    python -m bench.bench_vae --regions whole+gn --out bench/results/vae_h200.json
    python -m bench.bench_vae --micro-batches 4 --regions resnets,blocks,whole --top-ops 20
    python -m bench.bench_vae --micro-batches 4 --regions resnets,resnets+gn,whole+gn --top-ops 20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.bench_unet import top_ops
from bench.common import cuda_time, environment, save
from fastsync.accel import group_norm
from fastsync.accel.compile import compile_vae_regions, configure_inductor, vae_regions
from fastsync.components import make_scheduler, random_vae
from fastsync.denoise import ChunkDenoiser, SamplingOptions
from fastsync.engine import FastOptions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/vae_h200.json"))
    parser.add_argument("--micro-batches", default="4,8,16", type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--regions", default="whole+gn", type=lambda v: v.split(","))
    parser.add_argument("--top-ops", type=int, default=0)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = FastOptions().cudnn_benchmark
    dtype, device, res = torch.float16, torch.device("cuda"), 512
    g = torch.Generator(device=device).manual_seed(0)
    pixels = torch.rand(args.frames, 3, res, res, generator=g, device=device, dtype=dtype) * 2 - 1
    latents = torch.randn(args.frames, 4, res // 8, res // 8, generator=g, device=device, dtype=dtype)
    results: dict = {"environment": environment(), "frames": args.frames, "variants": {}}
    reference: dict = {}
    for regions in args.regions:
        vae = random_vae("full", seed=0).to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
        compiled = compile_vae(vae, regions)
        denoiser = ChunkDenoiser(lambda *a: None, vae, make_scheduler(), torch.ones(res, res),
                                 SamplingOptions(num_frames=args.frames), device=device, dtype=dtype,
                                 batch_vae=True)
        for size in args.micro_batches:
            name = f"micro_batch_{size}" if regions == "resnets" else f"micro_batch_{size}[{regions}]"
            results["variants"][name] = time_variant(denoiser, size, pixels, latents, args.top_ops, reference)
            results["variants"][name]["compiled_modules"] = compiled
            save(results, args.out)
            print(name, results["variants"][name], flush=True)


def compile_vae(vae, regions: str) -> int:
    """Compile `vae` in place as `regions` says; returns how many modules were compiled."""
    from diffusers.models.resnet import ResnetBlock2D

    regions, column_norms = regions.removesuffix("+gn"), regions.endswith("+gn")
    if regions == "whole":  # fast mode's, set up as accel.setup.prepare_fast does it
        if column_norms:
            group_norm.use_in_regions(vae, vae_regions())
        return compile_vae_regions(vae)
    if regions == "resnets":  # fast mode's regions until 2026-12-04
        modules = [m for m in vae.modules() if isinstance(m, ResnetBlock2D)]
    elif regions == "blocks":
        modules = [*vae.encoder.down_blocks, vae.encoder.mid_block, vae.decoder.mid_block, *vae.decoder.up_blocks]
    else:
        raise SystemExit(f"--regions: unknown {regions!r} (resnets, blocks, whole)")
    configure_inductor()
    for module in modules:
        if column_norms:
            group_norm.use_in(module)
        module.compile(fullgraph=True, dynamic=False)
    return len(modules)


def time_variant(denoiser, size: int, pixels, latents, n_top: int, reference: dict) -> dict:
    """Encode and decode timings at micro-batch `size`; outputs compared with the first variant's."""
    denoiser.vae_micro_batch = size
    row: dict = {}
    # the encode's compared output is the posterior mean: its samples draw fresh noise each call
    for name, fn, compared in (("encode", lambda: denoiser._encode([pixels, pixels]),
                                lambda: denoiser._posterior(torch.cat([pixels, pixels]))[0]),
                               ("decode", lambda: denoiser._decode(latents), lambda: denoiser._decode(latents))):
        started = time.perf_counter()
        fn()  # compiles the regions for this micro-batch shape
        torch.cuda.synchronize()
        row[f"{name}_first_call_s"] = round(time.perf_counter() - started, 2)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        timing = cuda_time(fn, warmup=2, repeat=5)
        row[f"{name}_s"] = round(timing["median_s"], 4)
        row[f"{name}_peak_extra_gb"] = round((torch.cuda.max_memory_allocated() - before) / 1e9, 2)
        row[f"{name}_rel_diff_vs_first_variant"] = _rel_diff(compared(), reference, name)
        if n_top:
            ops = top_ops(fn, 1000)
            row[f"{name}_kernel_ms"] = round(sum(op["cuda_ms"] for op in ops), 2)
            row[f"{name}_top_ops"] = ops[:n_top]
    row["chunk_vae_s"] = round(row["encode_s"] + row["decode_s"], 4)
    return row


def _rel_diff(out, reference: dict, name: str) -> float:
    """Largest deviation from the first variant's output, relative to that output's largest value."""
    out = out.flatten()
    first = reference.setdefault(name, out.float())
    return round(float((out.float() - first).abs().max() / first.abs().max()), 6)


if __name__ == "__main__":
    main()
