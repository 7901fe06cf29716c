"""The feed-forward's GEGLU per shape: cuBLAS + inductor's pointwise kernel (what compiled
regions run) against the fused Triton kernel (fastsync.accel.geglu), each tile config of
its sweep, and what the best one would save per CFG forward.

The shapes and their counts come from one CFG forward (2 x 16 frames at 512 px) run on the
meta device with hooks on every GEGLU, so they follow the model code.

    python -m bench.bench_geglu --out bench/results/geglu_h200.json
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
from pathlib import Path

import torch

from bench.common import cuda_time, environment, save
from fastsync.accel import geglu
from fastsync.config import UNET_PRESETS
from fastsync.models.attention import GEGLU
from fastsync.models.loading import build_unet_on_meta


def geglu_shapes(frames: int = 16, size: int = 64) -> dict[tuple[int, int], int]:
    """(tokens, width) -> calls per CFG forward."""
    unet = build_unet_on_meta(UNET_PRESETS["stage2_512"]).half().eval()
    counts: collections.Counter = collections.Counter()
    hooks = [m.register_forward_hook(lambda mod, args, out: counts.update([(args[0].numel() // args[0].shape[-1],
                                                                           args[0].shape[-1])]))
             for m in unet.modules() if isinstance(m, GEGLU)]
    with torch.device("meta"), torch.no_grad():
        sample = torch.randn(2, 13, frames, size, size, dtype=torch.float16)
        audio = torch.randn(2 * frames, 50, 384, dtype=torch.float16)
        unet(sample, torch.tensor(501), audio)
    for hook in hooks:
        hook.remove()
    return dict(sorted(counts.items(), reverse=True))


def time_shape(tokens: int, width: int, calls: int) -> dict:
    torch.manual_seed(0)
    module = GEGLU(width, 4 * width).to("cuda", torch.float16)
    x = torch.randn(tokens, width, device="cuda", dtype=torch.float16)
    w, b = module.proj.weight, module.proj.bias
    compiled = torch.compile(module, fullgraph=True)
    plain_out = compiled(x).float()
    row = {"tokens": tokens, "width": width, "calls": calls,
           "gemm_only_s": cuda_time(lambda: torch.nn.functional.linear(x, w, b))["median_s"],
           "compiled_plain_s": cuda_time(lambda: compiled(x))["median_s"], "configs": []}
    for config in geglu.SWEEP:
        entry = {"config": dataclasses.asdict(config)}
        try:
            out = geglu.launch(x, w, b, config=config)
            entry["median_s"] = cuda_time(lambda c=config: geglu.launch(x, w, b, config=c))["median_s"]
            entry["max_abs_diff"] = (out.float() - plain_out).abs().max().item()
        except Exception as exc:  # a config that does not fit (shared memory, registers)
            entry["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        row["configs"].append(entry)
    best = min((c for c in row["configs"] if "median_s" in c), key=lambda c: c["median_s"])
    row["best"] = best
    row["ratio_plain_over_best"] = round(row["compiled_plain_s"] / best["median_s"], 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/geglu_h200.json"))
    args = parser.parse_args()
    results: dict = {"environment": environment(), "shapes": []}
    plain_total = fused_total = 0.0
    with torch.no_grad():
        for (tokens, width), calls in geglu_shapes().items():
            row = time_shape(tokens, width, calls)
            best = row["best"]
            plain_total += calls * row["compiled_plain_s"]
            fused_total += calls * best["median_s"]
            results["shapes"].append(row)
            print(f"{tokens:7d} x {width:5d} x{calls:3d}: gemm {row['gemm_only_s'] * 1e3:.3f} ms, "
                  f"gemm+pointwise {row['compiled_plain_s'] * 1e3:.3f} ms, fused best {best['median_s'] * 1e3:.3f} ms "
                  f"{best['config']} (diff {best['max_abs_diff']:.2e})", flush=True)
            save(results, args.out)
    results["per_forward"] = {"plain_s": round(plain_total, 5), "fused_best_s": round(fused_total, 5),
                              "saved_s": round(plain_total - fused_total, 5)}
    print(results["per_forward"])
    save(results, args.out)


if __name__ == "__main__":
    main()
