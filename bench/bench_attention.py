"""Attention backends on the UNet's shapes (fp16): which kernel wins for head dim 40/80/160.

    python -m bench.bench_attention --out bench/results/attention.json
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.common import cuda_time, environment, save

# (name, batch, heads, tokens, keys, head_dim): spatial self-attention per level, CFG x 16 frames.
SHAPES = [
    ("self_l0", 32, 8, 4096, 4096, 40),
    ("self_l1", 32, 8, 1024, 1024, 80),
    ("self_l2", 32, 8, 256, 256, 160),
    ("cross_l0", 32, 8, 4096, 50, 40),
    ("temporal_l0", 8192, 8, 16, 16, 40),
]
BACKENDS = {
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "flash": [SDPBackend.FLASH_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "default": None,
}


def sdpa(q, k, v, kernels, scale=None):
    if kernels is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    with sdpa_kernel(kernels):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


def measure_shape(b, h, lq, lk, d) -> dict:
    q = torch.randn(b, h, lq, d, device="cuda", dtype=torch.float16)
    k = torch.randn(b, h, lk, d, device="cuda", dtype=torch.float16)
    v = torch.randn(b, h, lk, d, device="cuda", dtype=torch.float16)
    flop = 4 * b * h * lq * lk * d
    row = {}
    for backend, kernels in BACKENDS.items():
        try:
            t = cuda_time(lambda kernels=kernels: sdpa(q, k, v, kernels), repeat=20)["median_s"]
            row[backend] = {"ms": round(t * 1e3, 3), "tflops": round(flop / t / 1e12, 1)}
        except RuntimeError as exc:
            row[backend] = {"error": str(exc).splitlines()[0][:120]}
    if d % 64:  # zero-padded head dim with the true scale: same result, friendlier tile
        pad = 64 * math.ceil(d / 64) - d
        qp, kp, vp = (F.pad(x, (0, pad)) for x in (q, k, v))
        exact = sdpa(q, k, v, None).float()
        padded = sdpa(qp, kp, vp, [SDPBackend.FLASH_ATTENTION], scale=d**-0.5)[..., :d].float()
        t = cuda_time(lambda: sdpa(qp, kp, vp, [SDPBackend.FLASH_ATTENTION], scale=d**-0.5), repeat=20)["median_s"]
        row["padded64_flash"] = {"ms": round(t * 1e3, 3), "tflops": round(flop / t / 1e12, 1),
                                 "max_abs_diff_vs_default": float((exact - padded).abs().max())}
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/attention.json"))
    args = parser.parse_args()
    results = {"environment": environment(), "shapes": {}}
    for name, b, h, lq, lk, d in SHAPES:
        row = measure_shape(b, h, lq, lk, d)
        results["shapes"][name] = row
        print(name, {k: v.get("ms", v.get("error")) for k, v in row.items()}, flush=True)
        torch.cuda.empty_cache()
    save(results, args.out)


if __name__ == "__main__":
    main()
