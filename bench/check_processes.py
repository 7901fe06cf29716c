"""Is fast mode's output the same in every process? Which part differs when it is not?

Runs fresh processes one after another, each loading a random-weight engine (seeded, so
the weights are equal), warming it up and computing, on the same seeded inputs: the VAE's
encoder (posterior mean of 4 faces), its decoder (4 latents), one compiled CFG forward of
the UNet (not graphed), and whole chunks (20 steps, DeepCache, CUDA graphs). Each variant
is a set of FastOptions overrides and an inductor cache folder, so a first process (which
compiles) and later ones (which load what it kept) are told apart. It reports, for every
pair of processes, each part's largest difference.

    python -m bench.check_processes --out $OUT/processes.json \
        --variant first:cache=a --variant loaded:cache=a --variant loaded2:cache=a \
        --variant eager:cache=b,compile=0,cuda_graphs=0 --variant det:cache=c,env.TORCHINDUCTOR_DETERMINISTIC=1
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PARTS = ("encode", "decode", "unet", "chunk")


def _inputs(resolution: int):
    import torch

    g = torch.Generator().manual_seed(11)
    latent = resolution // 8
    return {
        "faces": [torch.randint(0, 256, (16, 3, resolution, resolution), generator=g, dtype=torch.uint8)
                  for _ in range(2)],
        "audio": [torch.randn(16, 50, 384, generator=g) for _ in range(2)],
        "pixels": torch.rand(4, 3, resolution, resolution, generator=g) * 2 - 1,
        "latents": torch.randn(4, 4, latent, latent, generator=g),
        "sample": torch.randn(1, 13, 16, latent, latent, generator=g),
    }


def child(overrides: dict, model_size: str, device: str, steps: int, npz: Path) -> dict:
    import torch

    from fastsync.api import LipSync
    from fastsync.denoise import SamplingOptions
    from fastsync.engine import EngineOptions, FastOptions
    from fastsync.pipeline import make_denoiser
    from fastsync.transfer import Download

    timed = _record_kernel_timing()
    started = time.perf_counter()
    defaults = FastOptions()
    # bool fields come as 0/1 from the command line
    overrides = {k: bool(v) if isinstance(getattr(defaults, k), bool) else v for k, v in overrides.items()}
    fast = dataclasses.replace(defaults, **overrides)
    options = EngineOptions(random_weights=True, device=device, model_size=model_size, fast=fast)
    sampling = SamplingOptions(steps=steps)
    engine = LipSync.from_options(options)
    engine.warm_up(sampling)
    ready = time.perf_counter() - started
    c = engine.components
    x = _inputs(options.resolution)
    dtype, device = c.dtype, c.device
    out = {}
    with torch.no_grad():
        pixels = x["pixels"].to(device, dtype).contiguous(memory_format=torch.channels_last)
        out["encode"] = c.vae.encode(pixels).latent_dist.mean
        latents = x["latents"].to(device, dtype).contiguous(memory_format=torch.channels_last)
        out["decode"] = c.vae.decode(latents).sample
        sample = x["sample"].to(device, dtype).expand(2, -1, -1, -1, -1)
        audio = torch.cat([torch.zeros_like(x["audio"][0]), x["audio"][0]]).to(device, dtype)
        out["unet"] = c.unet(sample, torch.tensor(500, device=device), audio, cfg_pair=True)
        denoiser = make_denoiser(c, sampling)
        out["chunk"] = torch.cat([torch.from_numpy(Download(denoiser(f, a)).numpy())
                                  for f, a in zip(x["faces"], x["audio"])])
        times = []
        for _ in range(3):  # one chunk's wall, models warm (not saved: its noise comes later)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            Download(denoiser(x["faces"][0], x["audio"][0])).numpy()
            times.append(time.perf_counter() - t0)
    np.savez(npz, **{k: v.float().cpu().numpy() for k, v in out.items()})
    return {"ready_s": round(ready, 2), "wall_s": round(time.perf_counter() - started, 2),
            "chunk_s": sorted(round(t, 4) for t in times), "timed_kernels": len(timed), "timed": timed[:20], **_inductor_settings()}


def _record_kernel_timing() -> list:
    """Inductor's Triton kernels that time their launch configs in this process, as they do
    it: a choice made by timing can differ between processes. Read after the run."""
    timed: list = []
    try:
        from torch._inductor.runtime import triton_heuristics
    except ImportError:
        return timed
    original = triton_heuristics.CachingAutotuner.autotune_to_one_config

    def recording(self, *args, **kwargs):
        fn = getattr(self, "fn", None)
        name = getattr(fn, "__name__", None) or getattr(getattr(fn, "fn", None), "__name__", "?")
        configs = [str(launcher.config) for launcher in (self.launchers or [])][:6]
        result = original(self, *args, **kwargs)
        timed.append({"kernel": name, "type": str(getattr(self, "heuristic_type", "")), "configs": configs,
                      "chosen": str(self.launchers[0].config) if self.launchers else None})
        return result

    triton_heuristics.CachingAutotuner.autotune_to_one_config = recording
    return timed


def _inductor_settings() -> dict:
    import torch

    inductor = torch._inductor.config
    tests = getattr(inductor, "test_configs", None)
    return {"deterministic": inductor.deterministic,
            "force_filter_reduction_configs": getattr(tests, "force_filter_reduction_configs", "absent")}


def _parse(spec: str) -> tuple[str, str, dict, dict]:
    name, _, rest = spec.partition(":")
    cache, overrides, env = "default", {}, {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key == "cache":
            cache = value
        elif key.startswith("env."):
            env[key[4:]] = value
        else:
            overrides[key] = int(value) if value.lstrip("-").isdigit() else value
    return name, cache, overrides, env


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", action="append", default=[], help="name:cache=DIR,option=value,...")
    parser.add_argument("--model-size", default="full")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps of the chunks (default 20, official)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--overrides", default="{}")
    parser.add_argument("--npz", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.overrides), args.model_size, args.device, args.steps, args.npz)), flush=True)
        return

    import subprocess

    from bench.common import environment, save

    root = Path(tempfile.mkdtemp(prefix="fastsync-processes-"))
    runs = []
    for spec in args.variant:
        name, cache, overrides, extra_env = _parse(spec)
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(root / f"cache-{cache}"), **extra_env)
        npz = root / f"{name}.npz"
        cmd = [sys.executable, "-m", "bench.check_processes", "--child", "--model-size", args.model_size,
               "--device", args.device, "--steps", str(args.steps),
               "--overrides", json.dumps(overrides), "--npz", str(npz)]
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        entry = {"name": name, "cache": cache, "overrides": overrides, "env": extra_env,
                 "process_wall_s": round(time.perf_counter() - started, 1)}
        entry.update(json.loads(lines[-1]) if lines else {"error": proc.stderr[-3000:]})
        print(entry, flush=True)
        runs.append((entry, npz if npz.exists() else None))

    pairs = []
    for (a, fa), (b, fb) in itertools.combinations(runs, 2):
        if fa is None or fb is None:
            continue
        na, nb = np.load(fa), np.load(fb)
        diffs = {p: float(np.abs(na[p] - nb[p]).max()) for p in PARTS}
        pairs.append({"a": a["name"], "b": b["name"], "max_abs_diff": diffs})
        print(a["name"], "vs", b["name"], diffs, flush=True)
    result = {"environment": environment(), "model_size": args.model_size,
              "runs": [e for e, _ in runs], "pairs": pairs}
    if args.out:
        save(result, args.out)


if __name__ == "__main__":
    main()
