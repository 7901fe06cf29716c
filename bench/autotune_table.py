"""Inductor's max-autotune log, as a table: for each GEMM or convolution it tuned, the
winning kernel, its time, and the ATen (cuBLAS / cuDNN) time when inductor listed it.

Inductor prints only the ten fastest choices, so where ATen is missing from them it was
slower than the tenth; that bound is kept as `aten_slower_than_ms`.

    python bench/autotune_table.py log.txt --out bench/results/unet_h200_gemm_autotune.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

CHOICE = re.compile(r"^\s+(\S+) ([0-9.]+) ms\s+([0-9.]+)%")
TOOK = re.compile(r"AUTOTUNE benchmarking takes ([0-9.]+) seconds")


def parse(lines: list[str]) -> list[dict]:
    rows: list[dict] = []
    for line in lines:
        if line.startswith("AUTOTUNE "):
            rows.append({"op": line[len("AUTOTUNE "):].strip(), "choices": []})
        elif rows and (match := CHOICE.match(line)):
            rows[-1]["choices"].append((match.group(1), float(match.group(2))))
        elif rows and (match := TOOK.search(line)) and "tuning_s" not in rows[-1]:
            rows[-1]["tuning_s"] = float(match.group(1))
    return [summarise(row) for row in rows if row["choices"]]


def summarise(row: dict) -> dict:
    best_name, best_ms = row["choices"][0]
    aten = [ms for name, ms in row["choices"] if not name.startswith("triton")]
    out = {"op": row["op"], "best": best_name, "best_ms": best_ms, "tuning_s": row.get("tuning_s")}
    if aten:
        out["aten_ms"] = aten[0]
        out["aten_over_best"] = round(aten[0] / best_ms, 2)
    else:
        out["aten_slower_than_ms"] = row["choices"][-1][1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("log", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = parse(args.log.read_text(errors="replace").splitlines())
    args.out.write_text(json.dumps({"source": args.log.name, "ops": rows}, indent=1) + "\n")
    for row in rows:
        aten = row.get("aten_ms", f">{row.get('aten_slower_than_ms')}")
        print(f"{row['op']:48s} {row['best']:16s} {row['best_ms']:.4f} ms  aten {aten}")


if __name__ == "__main__":
    main()
