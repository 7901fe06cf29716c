"""The GEMMs of one CFG forward (2 x 16 frames at 512 px), counted by shape on the meta
device (no GPU, no weights in memory), and, given inductor's tuning table
(bench/autotune_table.py), what its Triton kernels would save at least where they won.

The saving is a lower bound from isolated kernel timings: where cuBLAS was not among the
ten fastest choices inductor listed, its time is taken as the tenth's.

    python bench/gemm_counts.py --autotune bench/results/unet_h200_gemm_autotune.json \\
        --out bench/results/unet_gemm_counts.json
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastsync.config import UNET_PRESETS
from fastsync.models.loading import build_unet_on_meta

GEMMS = {"mm", "addmm", "bmm"}


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in GEMMS:
            shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
            if name == "addmm":
                shapes = shapes[1:]  # the bias; inductor's table names input and weight
            self.counts[name + "(" + ", ".join("x".join(map(str, s)) for s in shapes) + ")"] += 1
        return func(*args, **(kwargs or {}))


def count(frames: int = 16, size: int = 64) -> dict[str, int]:
    unet = build_unet_on_meta(UNET_PRESETS["stage2_512"]).half().eval()
    with torch.device("meta"):
        sample = torch.randn(2, 13, frames, size, size, dtype=torch.float16)
        audio = torch.randn(2 * frames, 50, 384, dtype=torch.float16)
        counter = _Count()
        with torch.no_grad(), counter:
            unet(sample, torch.tensor(501), audio)
    return dict(counter.counts.most_common())


def key(op: str) -> str:
    """inductor's 'addmm(MxN, MxK, KxN)' as 'addmm(MxK, KxN)', the form counted here."""
    name, shapes = op.split("(", 1)
    parts = shapes.rstrip(")").split(", ")
    return f"{name}({', '.join(parts[1:] if name == 'addmm' else parts)})"


def savings(counts: dict[str, int], table: dict) -> list[dict]:
    rows = []
    for entry in table["ops"]:
        calls = counts.get(key(entry["op"]), 0)
        aten = entry.get("aten_ms", entry.get("aten_slower_than_ms"))
        if not calls or aten is None or not entry["best"].startswith("triton"):
            continue
        rows.append({"op": key(entry["op"]), "calls": calls, "triton_ms": entry["best_ms"],
                     "aten_ms_at_least": aten, "saved_ms_at_least": round(calls * (aten - entry["best_ms"]), 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--autotune", type=Path, help="a table written by bench/autotune_table.py")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    counts = count()
    result: dict = {"forward": "CFG pair, 16 frames, 64x64 latents, fp16", "gemm_calls": counts}
    if args.autotune:
        rows = savings(counts, json.loads(args.autotune.read_text()))
        result["triton_wins"] = rows
        result["saved_ms_at_least"] = round(sum(row["saved_ms_at_least"] for row in rows), 2)
        result["autotune_table"] = args.autotune.name
        for row in rows:
            print(f"{row['op']:36s} x{row['calls']:3d}  saves >= {row['saved_ms_at_least']:.3f} ms")
        print(f"total >= {result['saved_ms_at_least']} ms per forward")
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
