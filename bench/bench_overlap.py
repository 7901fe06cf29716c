"""Would a chunk's VAE work hide under the next chunk's denoising? One fast-mode process.

A job's GPU time per 16-frame chunk is the UNet's 20 steps (CUDA-graph replays) and the
VAE's 32 encodes and 16 decodes, one after the other on one stream. This times, on a
warmed-up fast-mode engine (random full-size weights, 512 px, official settings):

  unet        one chunk's 20 steps alone
  vae         one chunk's encodes and decodes alone
  sequential  the two back to back (what a job does now)
  overlapped  the VAE on a second stream while the 20 steps run on the first

and the peak GPU memory of each. If `overlapped` is well under `sequential`, decoding
chunk k and encoding chunk k+2 beside chunk k+1's denoising would pay; if it is about the
same, the kernels already fill the GPU and the streams only take turns.

    python -m bench.bench_overlap --out bench/results/overlap_h100.json
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from bench.bench_unet import top_ops
from bench.common import cuda_time, environment, save
from fastsync.accel.predictor import make_predictor
from fastsync.api import LipSync
from fastsync.denoise import ChunkDenoiser, SamplingOptions
from fastsync.engine import EngineOptions, FastOptions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/overlap_h100.json"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--top-ops", type=int, default=0, help="also list the overlapped run's heaviest kernels")
    args = parser.parse_args()
    sampling = SamplingOptions()
    engine = LipSync.from_options(EngineOptions(random_weights=True, device="cuda", mode="fast", fast=FastOptions()))
    warm = engine.warm_up(sampling)
    c = engine.components
    predict, reset = make_predictor(c, sampling)
    denoiser = ChunkDenoiser(predict, c.vae, c.scheduler, c.mask, sampling, device=c.device, dtype=c.dtype,
                             batch_vae=True, vae_micro_batch=c.options.fast.vae_micro_batch, on_chunk_start=reset)
    res, frames = c.mask.shape[-1], sampling.num_frames
    g = torch.Generator(device="cuda").manual_seed(0)
    pixels = torch.rand(frames, 3, res, res, generator=g, device="cuda", dtype=c.dtype) * 2 - 1
    latent = torch.randn(2, 13, frames, res // 8, res // 8, generator=g, device="cuda", dtype=c.dtype)
    latent[1] = latent[0]  # a CFG pair: equal halves
    audio = torch.randn(frames, 50, 384, generator=g, device="cuda", dtype=c.dtype)
    audio = torch.cat([torch.zeros_like(audio), audio])
    timesteps = list(denoiser.timesteps)

    def unet() -> None:  # the steps' model calls; the scheduler's few small kernels left out
        reset()
        for step, t in enumerate(timesteps):
            predict(latent, t, audio, step)

    def vae() -> None:
        denoiser._encode([pixels * denoiser.mask, pixels])
        denoiser._decode(latent[0, :4].permute(1, 0, 2, 3))

    side = torch.cuda.Stream()

    def sequential() -> None:
        vae()
        unet()

    def overlapped() -> None:
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            vae()
        unet()
        torch.cuda.current_stream().wait_stream(side)

    results: dict = {"environment": environment(), "warm_up": warm, "settings": dataclasses.asdict(sampling),
                     "variants": {}}
    for name, fn in (("unet", unet), ("vae", vae), ("sequential", sequential), ("overlapped", overlapped)):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        timing = cuda_time(fn, warmup=2, repeat=args.repeat)
        results["variants"][name] = {"median_s": round(timing["median_s"], 4), "min_s": round(timing["min_s"], 4),
                                     "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)}
        print(name, results["variants"][name], flush=True)
        save(results, args.out)
    v = results["variants"]
    results["ratio_sequential_over_overlapped"] = round(v["sequential"]["median_s"] / v["overlapped"]["median_s"], 3)
    results["hidden_share_of_vae"] = round((v["sequential"]["median_s"] - v["overlapped"]["median_s"])
                                           / v["vae"]["median_s"], 3)
    if args.top_ops:
        results["top_ops_overlapped"] = top_ops(overlapped, args.top_ops)
    save(results, args.out)
    print({k: results[k] for k in ("ratio_sequential_over_overlapped", "hidden_share_of_vae")}, flush=True)


if __name__ == "__main__":
    main()
