"""GEGLU of the UNet's feed-forwards: the fused Triton kernel (fastsync.accel.geglu) against
what fast mode compiled before it (cuBLAS product, then inductor's kernel for bias, gelu
and product) and against the eager layer, at every shape of one CFG forward.

Each shape is timed alone, ten calls back to back per sample; the per-forward total weighs
each shape by how often the forward runs it (counted on the meta device). The kernel's
configurations are swept; the fastest per K is what `geglu.CONFIGS` should hold.

    python -m bench.bench_geglu --out bench/results/geglu_h100.json
"""

from __future__ import annotations

import argparse
import collections
import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import cuda_time, environment, save
from fastsync.accel import geglu
from fastsync.config import UNET_PRESETS
from fastsync.models.attention import GEGLU
from fastsync.models.loading import build_unet_on_meta

SWEEP = [(128, 128, 32, 8, 4, False), (128, 128, 64, 8, 3, "tma"), (128, 64, 32, 4, 5, "tma"),
         (256, 64, 64, 8, 3, "tma"), (128, 64, 32, 4, 3, "tma"), (128, 64, 64, 4, 3, "tma"),
         (64, 128, 32, 4, 4, "tma"), (64, 64, 64, 4, 3, "tma"),
         (128, 128, 64, 8, 3, "persistent"), (128, 128, 64, 8, 3, "persistent_ws"),
         (128, 64, 64, 4, 3, "persistent:2"), (128, 64, 64, 4, 3, "persistent_ws:2"),
         (128, 128, 32, 8, 4, "persistent_ws"), (128, 64, 32, 4, 4, "persistent_ws:2"),
         (64, 128, 64, 4, 3, "persistent_ws:2"), (128, 128, 64, 4, 3, "persistent_ws")]
CALLS = 10  # per timed sample: the smallest shape's kernel is ~10 us


def shapes_per_forward(frames: int = 16, size: int = 64) -> collections.Counter:
    """(M, K, N) of every GEGLU in one CFG forward, with how often it runs."""
    unet = build_unet_on_meta(UNET_PRESETS["stage2_512"]).half().eval()
    counts: collections.Counter = collections.Counter()
    for module in unet.modules():
        if isinstance(module, GEGLU):
            module.register_forward_hook(
                lambda _m, args, out: counts.update([(args[0].numel() // args[0].shape[-1], args[0].shape[-1],
                                                      out.shape[-1])]))
    with torch.device("meta"), torch.no_grad():
        sample = torch.randn(2, 13, frames, size, size, dtype=torch.float16)
        unet(sample, torch.tensor(501), torch.randn(2 * frames, 50, 384, dtype=torch.float16))
    return counts


def split_bias_geglu(x, weight, bias):
    """Fast mode's compiled layer before the kernel: a product without bias (SplitBiasLinear),
    the bias add fused into the gate's pointwise kernel."""
    value, gate = (F.linear(x, weight) + bias).chunk(2, dim=-1)
    return value * F.gelu(gate)


def per_call_ms(fn) -> float:
    def calls():
        for _ in range(CALLS):
            fn()
    return round(cuda_time(calls, repeat=20)["median_s"] * 1e3 / CALLS, 4)


def time_shape(m: int, k: int, n: int, count: int, compiled) -> dict:
    """One shape: the eager layer, the compiled split-bias layer and every swept kernel config."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16, generator=g)
    weight = (torch.randn(2 * n, k, device="cuda", generator=g) / k**0.5).half()
    bias = (torch.randn(2 * n, device="cuda", generator=g) * 0.1).half()
    exact = geglu.reference(x.float(), weight.float(), bias.float())
    scale = exact.abs().max().item()

    def rel_err(out: torch.Tensor) -> float:
        return (out.float() - exact).abs().max().item() / scale

    row = {"m": m, "k": k, "n": n, "per_forward": count,
           "eager_ms": per_call_ms(lambda: geglu.reference(x, weight, bias)),
           "compiled_split_bias_ms": per_call_ms(lambda: compiled(x, weight, bias)),
           "eager_rel_err": rel_err(geglu.reference(x, weight, bias)),
           "compiled_rel_err": rel_err(compiled(x, weight, bias)), "fused": {}}
    for config in SWEEP:
        call = functools.partial(geglu.launch, x, weight, bias, config=config)
        try:
            row["fused"][str(config)] = {"ms": per_call_ms(call), "rel_err": rel_err(call())}
        except Exception as error:  # a configuration that does not fit (shared memory, registers)
            row["fused"][str(config)] = repr(error)[:200]
    timed = {c: v["ms"] for c, v in row["fused"].items() if isinstance(v, dict)}
    best = min(timed, key=timed.get)
    row["fused_best"] = {"config": best, "ms": timed[best]}
    tflop = 2 * m * k * 2 * n / 1e12
    row["fused_best_tflops"] = round(tflop / (timed[best] / 1e3), 1)
    row["compiled_tflops"] = round(tflop / (row["compiled_split_bias_ms"] / 1e3), 1)
    print(f"M={m:6d} K={k:4d} N={n:4d} x{count:2d}: eager {row['eager_ms']:.4f}  compiled "
          f"{row['compiled_split_bias_ms']:.4f}  fused {timed[best]:.4f} ms {best}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/geglu.json"))
    args = parser.parse_args()

    counts = shapes_per_forward()
    compiled = torch.compile(split_bias_geglu, dynamic=False)
    rows = [time_shape(m, k, n, count, compiled) for (m, k, n), count in sorted(counts.items())]
    totals = {key: round(sum(row["per_forward"] * row[key] for row in rows), 3)
              for key in ("eager_ms", "compiled_split_bias_ms")}
    totals["fused_best_ms"] = round(sum(row["per_forward"] * row["fused_best"]["ms"] for row in rows), 3)
    results = {"environment": environment(), "shapes": rows, "per_forward_ms": totals}
    print(results["per_forward_ms"])
    save(results, args.out)


if __name__ == "__main__":
    main()
