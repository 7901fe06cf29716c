"""The VAE's share of one 16-frame chunk at 512 px, full-size random weights, fp16.

A chunk encodes 32 frames (the masked and the reference faces, one batch) and decodes 16,
through `ChunkDenoiser._encode` / `_decode` exactly as a job calls them, with fast mode's
set-up (channels_last weights, compiled ResNet regions). Each micro-batch size is timed
side by side with its peak GPU memory: fast mode's 4 bounds the job's peak, and larger
ones show what that bound costs.

    python -m bench.bench_vae --out bench/results/vae_h200.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.common import cuda_time, environment, save
from fastsync.accel.compile import compile_vae_regions
from fastsync.components import make_scheduler, random_vae
from fastsync.denoise import ChunkDenoiser, SamplingOptions
from fastsync.engine import FastOptions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/vae_h200.json"))
    parser.add_argument("--micro-batches", default="4,8,16", type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = FastOptions().cudnn_benchmark
    dtype, device, res = torch.float16, torch.device("cuda"), 512
    vae = random_vae("full", seed=0).to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    compile_vae_regions(vae)
    denoiser = ChunkDenoiser(lambda *a: None, vae, make_scheduler(), torch.ones(res, res),
                             SamplingOptions(num_frames=args.frames), device=device, dtype=dtype, batch_vae=True)
    g = torch.Generator(device=device).manual_seed(0)
    pixels = torch.rand(args.frames, 3, res, res, generator=g, device=device, dtype=dtype) * 2 - 1
    latents = torch.randn(args.frames, 4, res // 8, res // 8, generator=g, device=device, dtype=dtype)
    results: dict = {"environment": environment(), "frames": args.frames, "variants": {}}
    for size in args.micro_batches:
        denoiser.vae_micro_batch = size
        row: dict = {}
        for name, fn in (("encode", lambda: denoiser._encode([pixels, pixels])),
                         ("decode", lambda: denoiser._decode(latents))):
            started = time.perf_counter()
            fn()  # compiles the regions for this micro-batch shape
            torch.cuda.synchronize()
            row[f"{name}_first_call_s"] = round(time.perf_counter() - started, 2)
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            timing = cuda_time(fn, warmup=2, repeat=5)
            row[f"{name}_s"] = round(timing["median_s"], 4)
            row[f"{name}_peak_extra_gb"] = round((torch.cuda.max_memory_allocated() - before) / 1e9, 2)
        row["chunk_vae_s"] = round(row["encode_s"] + row["decode_s"], 4)
        results["variants"][f"micro_batch_{size}"] = row
        save(results, args.out)
        print(size, row, flush=True)


if __name__ == "__main__":
    main()
