"""Cold start: load + compile + graph capture in a fresh process, twice.

The weights are loaded the way a user's are: from a checkpoint folder in the official
layout and formats (fp32 `latentsync_unet.pt`, OpenAI `whisper/tiny.pt`, diffusers VAE),
written here once with seeded random weights. The first process starts with an empty
compile cache; the second finds the first one's inductor cache on disk (what a user's
second run sees). Both read the checkpoint from the page cache, as a second run would.
Each child prints one JSON line.

    python -m bench.bench_cold_start --out bench/results/cold_start.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path



def write_checkpoints(root: Path) -> None:
    """Seeded random full-size weights in the official layout (fp32 UNet, as published)."""
    from fastsync.checkpoints import save_layout
    from fastsync.components import random_vae
    from fastsync.config import unet_config_for
    from fastsync.models.loading import random_unet
    from fastsync.models.whisper import random_whisper_encoder

    save_layout(root, random_unet(unet_config_for("1.6", "full")), random_whisper_encoder(), random_vae("full"))


def child(checkpoint_dir: str) -> None:
    started = time.perf_counter()
    import torch

    torch_imported = time.perf_counter()
    from fastsync.api import LipSync
    from fastsync.denoise import SamplingOptions
    from fastsync.engine import EngineOptions

    imported = time.perf_counter()
    torch.cuda.init()
    cuda_ready = time.perf_counter()
    engine = LipSync.from_options(EngineOptions(checkpoint_dir=checkpoint_dir, device="cuda", mode="fast"))
    torch.cuda.synchronize()
    loaded = time.perf_counter()
    engine.warm_up(SamplingOptions())
    warmed = time.perf_counter()
    print(json.dumps({"import_s": round(imported - started, 2), "of_which_torch_s": round(torch_imported - started, 2),
                      "cuda_init_s": round(cuda_ready - imported, 2), "load_s": round(loaded - cuda_ready, 2),
                      "compile_and_capture_s": round(warmed - loaded, 2), "total_s": round(warmed - started, 2),
                      "load_parts_s": engine.components.load_timings}))


def main() -> None:
    from bench.common import environment, save  # not at the top: it imports torch, which the child times

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache-dir", default="/tmp/fastsync-inductor-cold")
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("/tmp/fastsync-checkpoints"))
    args = parser.parse_args()
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=args.cache_dir)
    results = {"environment": environment(), "cache_dir_empty_at_start": not Path(args.cache_dir).exists(), "processes": []}
    if not (args.checkpoint_dir / "latentsync_unet.pt").is_file():
        started = time.perf_counter()
        write_checkpoints(args.checkpoint_dir)
        results["write_checkpoints_s"] = round(time.perf_counter() - started, 2)
    results["unet_checkpoint_bytes"] = (args.checkpoint_dir / "latentsync_unet.pt").stat().st_size
    for name in ("first_process", "second_process"):
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "bench.bench_cold_start", "--child", str(args.checkpoint_dir)], env=env,
                              capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        entry = json.loads(line[-1]) if line else {"error": proc.stderr[-2000:]}
        entry["process_wall_s"] = round(time.perf_counter() - started, 2)
        entry["name"] = name
        results["processes"].append(entry)
        print(entry, flush=True)
        save(results, args.out)


if __name__ == "__main__":
    if "--child" in sys.argv:
        child(sys.argv[sys.argv.index("--child") + 1])
    else:
        main()
