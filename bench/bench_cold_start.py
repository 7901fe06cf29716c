"""Cold start: load + compile + graph capture in a fresh process, twice.

The first process starts with an empty compile cache; the second finds the first one's
inductor cache on disk (what a user's second run sees). Each child prints one JSON line.

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

from bench.common import save


def child() -> None:
    started = time.perf_counter()
    import torch

    from fastsync.api import LipSync
    from fastsync.denoise import SamplingOptions
    from fastsync.engine import EngineOptions

    imported = time.perf_counter()
    engine = LipSync.from_options(EngineOptions(random_weights=True, device="cuda", mode="fast"))
    torch.cuda.synchronize()
    loaded = time.perf_counter()
    engine.warm_up(SamplingOptions())
    warmed = time.perf_counter()
    print(json.dumps({"import_s": round(imported - started, 2), "load_s": round(loaded - imported, 2),
                      "compile_and_capture_s": round(warmed - loaded, 2), "total_s": round(warmed - started, 2)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache-dir", default="/tmp/fastsync-inductor-cold")
    args = parser.parse_args()
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=args.cache_dir)
    results = {"cache_dir_empty_at_start": not Path(args.cache_dir).exists(), "processes": []}
    for name in ("first_process", "second_process"):
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "bench.bench_cold_start", "--child"], env=env,
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
        child()
    else:
        main()
