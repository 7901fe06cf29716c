"""Loading the fp32 UNet checkpoint onto the GPU in fp16: blocking against non-blocking copies.

PyTorch converts the dtype of a blocking host-to-device copy on the CPU, and of a
non-blocking one on the GPU. Each variant runs in its own process on the same checkpoint,
read from the page cache (written once by bench_cold_start's writer).

    python -m bench.bench_load --out bench/results/load.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("blocking", "non_blocking")


def child(checkpoint: str, variant: str) -> None:
    import torch

    from fastsync.config import unet_config_for
    from fastsync.models.loading import load_unet

    torch.cuda.init()
    started = time.perf_counter()
    unet = load_unet(checkpoint, unet_config_for("1.6", "full"))  # mapped, fp32, no copy yet
    mapped = time.perf_counter()
    unet.to(device="cuda", dtype=torch.float16, non_blocking=variant == "non_blocking")
    torch.cuda.synchronize()
    done = time.perf_counter()
    print(json.dumps({"variant": variant, "map_s": round(mapped - started, 2), "to_gpu_fp16_s": round(done - mapped, 2),
                      "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)}))


def profile_components(checkpoint_dir: str) -> None:
    """cProfile of a whole fast-mode load (no compilation yet): where its seconds go."""
    import cProfile
    import pstats

    import torch

    from fastsync.engine import EngineOptions, load_components

    device = "cuda" if torch.cuda.is_available() else "cpu"
    profiler = cProfile.Profile()
    profiler.enable()
    components = load_components(EngineOptions(checkpoint_dir=Path(checkpoint_dir), device=device))
    profiler.disable()
    print(json.dumps({"load_parts_s": components.load_timings}))
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)


def unet_parts(checkpoint: str) -> dict[str, float]:
    """Seconds of each step of `load_unet` before the copy to the GPU."""
    import torch

    from fastsync.config import unet_config_for
    from fastsync.models import loading

    seconds, started = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal started
        seconds[name] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()

    model = loading.build_unet_on_meta(unet_config_for("1.6", "full"))
    lap("build_on_meta")
    raw = loading._read_checkpoint(Path(checkpoint))
    lap("torch_load_mmap")
    state = loading._state_dict_of(raw, Path(checkpoint))
    loading.diff_keys(loading.expected_shapes(model), {k: tuple(v.shape) for k, v in state.items()})
    lap("check_keys")
    model.load_state_dict(state, strict=True, assign=True)
    lap("assign")
    model.to(device="cuda" if torch.cuda.is_available() else "cpu", dtype=torch.float16)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    lap("to_device_fp16")
    return seconds


def profile_unet(checkpoint: str, out: Path) -> None:
    """The steps of load_unet twice (the second with cProfile), in this process."""
    import cProfile
    import io
    import pstats

    from bench.common import environment, save

    first = unet_parts(checkpoint)
    profiler = cProfile.Profile()
    profiler.enable()
    second = unet_parts(checkpoint)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
    save({"environment": environment(), "first_s": first, "second_profiled_s": second}, out)
    out.with_suffix(".txt").write_text(text.getvalue())
    print(first, second, text.getvalue()[:6000], flush=True)


def main() -> None:
    from bench.bench_cold_start import write_checkpoints
    from bench.common import environment, save

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("/tmp/fastsync-checkpoints"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--unet-parts", action="store_true",
                        help="instead: time each step of load_unet, then profile it (writes --out and a .txt)")
    args = parser.parse_args()
    if not (args.checkpoint_dir / "latentsync_unet.pt").is_file():
        write_checkpoints(args.checkpoint_dir)
    checkpoint = str(args.checkpoint_dir / "latentsync_unet.pt")
    if args.unet_parts:
        return profile_unet(checkpoint, args.out)
    results = {"environment": environment(), "runs": []}
    for _ in range(args.repeat):  # alternate, so the page cache and clocks treat both alike
        for variant in VARIANTS:
            proc = subprocess.run([sys.executable, "-m", "bench.bench_load", "--child", checkpoint, variant],
                                  capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            entry = json.loads(lines[-1]) if lines else {"variant": variant, "error": proc.stderr[-2000:]}
            results["runs"].append(entry)
            print(entry, flush=True)
            save(results, args.out)
    best = {v: min(r["to_gpu_fp16_s"] for r in results["runs"] if r.get("variant") == v and "error" not in r)
            for v in VARIANTS}
    results["best_to_gpu_fp16_s"] = best
    results["blocking_over_non_blocking"] = round(best["blocking"] / best["non_blocking"], 2)
    save(results, args.out)


if __name__ == "__main__":
    if "--profile-components" in sys.argv:
        profile_components(sys.argv[sys.argv.index("--profile-components") + 1])
    elif "--child" in sys.argv:
        i = sys.argv.index("--child")
        child(sys.argv[i + 1], sys.argv[i + 2])
    else:
        main()
