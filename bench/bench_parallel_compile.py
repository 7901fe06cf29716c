"""Compiling the warm-up's regions one after another against side by side in worker processes.

Each variant runs in a fresh process with an empty inductor cache of its own, so neither
finds the other's kernels: `FastOptions.compile_workers=0` (one after another, in the
process) and the given worker counts. The child builds a fast-mode engine with random
weights, installs the compiled regions and runs the warm-up chunk; the time reported is
the warm-up's, which is where every region compiles.

On a GPU that is `LipSync.warm_up` itself. On a CPU fast mode compiles nothing, so the child
installs the regions as fast set-up does on a GPU and runs the same two warm-up steps;
inductor then writes C++ instead of Triton, and a 2-core machine has little to share out.

    python -m bench.bench_parallel_compile --device cpu --model-size tiny --out bench/results/parallel_compile_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def child(device: str, model_size: str, workers: str) -> None:
    import torch

    from fastsync.accel import precompile
    from fastsync.accel.compile import compile_vae_regions, regions_dir
    from fastsync.accel.setup import compile_unet
    from fastsync.accel.warmup import _compile_side_by_side, warm_chunk
    from fastsync.api import LipSync
    from fastsync.denoise import SamplingOptions
    from fastsync.engine import FastOptions

    fast = FastOptions(compile_workers=int(workers), host_processes=False)
    engine = LipSync.load(random_weights=True, model_size=model_size, device=device, mode="fast", fast=fast)
    sampling = SamplingOptions()
    c = engine.components
    started = time.perf_counter()
    if c.device.type == "cuda":
        spent = engine.warm_up(sampling)
    else:
        store = c.cache["region_compiler"] = precompile.RegionCompiler(regions_dir())
        compile_unet(c.unet, fast, store=store)
        compile_vae_regions(c.vae, store=store)
        with torch.inference_mode():
            spent = _compile_side_by_side(c, sampling)
            warm_chunk(c, sampling)
    spent["warm_up_s"] = round(time.perf_counter() - started, 2)
    store = c.cache["region_compiler"]
    print(json.dumps({"workers": int(workers), "warm_up": spent, "regions": store.stats.__dict__}))


def main() -> None:
    from bench.common import environment, run_child, save  # not at the top: the children time their own imports

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model-size", default="full")
    parser.add_argument("--workers", default="0,-1", type=lambda v: [int(x) for x in v.split(",")],
                        help="compile_workers values, one fresh process each (-1: the default count)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = {"environment": environment(), "device": args.device, "model_size": args.model_size, "runs": []}
    for workers in args.workers:
        with tempfile.TemporaryDirectory(prefix="fastsync-bench-cache-") as cache:
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
            entry = {"workers": workers, **run_child("bench.bench_parallel_compile",
                                                     [args.device, args.model_size, str(workers)], env)}
        results["runs"].append(entry)
        print(entry, flush=True)
        save(results, args.out)
    walls = {r["workers"]: r["warm_up"]["warm_up_s"] for r in results["runs"] if "warm_up" in r}
    if 0 in walls:
        results["warm_up_ratio_sequential_over"] = {str(w): round(walls[0] / s, 2) for w, s in walls.items() if w}
    save(results, args.out)


if __name__ == "__main__":
    child(*sys.argv[2:]) if sys.argv[1:2] == ["--child"] else main()
