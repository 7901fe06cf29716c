"""cuDNN's algorithm timing (`FastOptions.cudnn_benchmark`): what it costs once per process
and what it gains per call, eager fp16 channels_last at 512 px.

With `torch.backends.cudnn.benchmark` on, the first call of each convolution shape times
every algorithm; the choice lives in the process only, so every process pays again. Each
setting runs in its own fresh process on the same checkpoint (written once by the
cold-start benchmark's writer): the first UNet CFG forward and VAE decode (4 frames), then
the median of the next calls.

    python -m bench.bench_cudnn --out bench/results/cudnn.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

SETTINGS = ("benchmark", "heuristics")


def _timed(fn, repeat: int) -> tuple[float, float]:
    import torch

    times = []
    for _ in range(repeat + 1):
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return round(times[0], 3), round(statistics.median(times[1:]), 4)


def child(checkpoint_dir: str, setting: str, repeat: int) -> None:
    import torch

    from bench.bench_unet import inputs
    from fastsync.checkpoints import CheckpointLayout
    from fastsync.components import load_vae
    from fastsync.config import unet_config_for
    from fastsync.models.loading import load_unet

    torch.backends.cudnn.benchmark = setting == "benchmark"
    layout = CheckpointLayout(Path(checkpoint_dir))
    unet = load_unet(layout.unet, unet_config_for("1.6", "full"), device="cuda", dtype=torch.float16)
    unet.to(memory_format=torch.channels_last)
    vae = load_vae(layout.vae_dir).to("cuda", torch.float16).to(memory_format=torch.channels_last)
    sample, t, audio = inputs(torch.float16)
    sample = sample.contiguous(memory_format=torch.channels_last_3d)
    latents = torch.randn(4, 4, 64, 64, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        unet_first, unet_median = _timed(lambda: unet(sample, t, audio), repeat)
        vae_first, vae_median = _timed(lambda: vae.decode(latents).sample, repeat)
    print(json.dumps({"setting": setting, "unet_first_s": unet_first, "unet_median_s": unet_median,
                      "vae_decode_first_s": vae_first, "vae_decode_median_s": vae_median}))


def main() -> None:
    from bench.bench_cold_start import write_checkpoints
    from bench.common import environment, run_child, save

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("/tmp/fastsync-checkpoints"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not (args.checkpoint_dir / "latentsync_unet.pt").is_file():
        write_checkpoints(args.checkpoint_dir)
    results = {"environment": environment(), "runs": []}
    for setting in SETTINGS:
        entry = {"setting": setting, **run_child("bench.bench_cudnn", [str(args.checkpoint_dir), setting,
                                                                       str(args.repeat)])}
        results["runs"].append(entry)
        print(entry, flush=True)
        save(results, args.out)
    by = {r["setting"]: r for r in results["runs"] if "error" not in r}
    if len(by) == 2:
        bench, heur = by["benchmark"], by["heuristics"]
        results["one_time_cost_s"] = {  # what timing the algorithms adds to the first calls
            "unet": round(bench["unet_first_s"] - heur["unet_first_s"], 3),
            "vae_decode": round(bench["vae_decode_first_s"] - heur["vae_decode_first_s"], 3)}
        results["heuristics_over_benchmark_per_call"] = {
            "unet": round(heur["unet_median_s"] / bench["unet_median_s"], 3),
            "vae_decode": round(heur["vae_decode_median_s"] / bench["vae_decode_median_s"], 3)}
    save(results, args.out)


if __name__ == "__main__":
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        child(sys.argv[i + 1], sys.argv[i + 2], int(sys.argv[i + 3]))
    else:
        main()
