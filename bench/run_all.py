"""The issue-5 benchmark in one GPU session: UNet micro-benchmark, then the demo1 job in
reference and fast mode side by side; merges everything with the targets into
bench/results/<gpu>.json (e.g. h100.json, h200.json: named after the GPU it ran on).

    python -m bench.run_all --video demo1_video.mp4 --audio demo1_audio.wav \
        --landmarks demo1_landmarks.json --out-dir bench/results
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from bench import bench_cold_start as cold_start
from bench.common import environment, save
from fastsync.engine import FastOptions

TARGETS = {
    "unet_forward_s": ("<=", 0.085),
    "unet_tflops": (">=", 415),
    "e2e_wall_s": ("<=", 10.0),
    "peak_gpu_allocated_gb": ("<=", 5.0),
    "cold_start_first_s": ("<=", 60.0),
    "cold_start_second_s": ("<=", 15.0),
    "psnr_db": (">=", 35.0),
    "ssim": (">=", 0.98),
}


# fast mode's UNet forward as FastOptions has it: with cfg_pair, bench_unet times it as its own variant
UNET_FLAGS = ("--cfg-pair",) if FastOptions().cfg_pair else ()
FAST_UNET_VARIANT = "compiled_graph[cfg_pair]" if FastOptions().cfg_pair else "compiled_graph"


def _run(module: str, *args: str) -> None:
    print(f"== {module} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", module, *args], check=True)


def _verdict(measured: dict) -> dict:
    out = {}
    for key, (op, bound) in TARGETS.items():
        value = measured.get(key)
        ok = None if value is None else (value <= bound if op == "<=" else value >= bound)
        out[key] = {"measured": value, "target": f"{op} {bound}", "met": ok}
    return out


def _cold_start_ratios(cold: dict, chosen: str) -> dict:
    variants = {p.get("variant", "precompile") for p in cold["processes"]}
    return {f"{variant}_over_{chosen}": cold_start.ratios(cold["processes"], variant, chosen)
            for variant in sorted(variants - {chosen})}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--video")
    parser.add_argument("--audio")
    parser.add_argument("--landmarks")
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    parser.add_argument("--host-variants", default="threads,processes",
                        help="fast-mode host stages to run side by side (see bench_e2e)")
    parser.add_argument("--reuse", action="store_true",
                        help="merge the unet_<gpu>.json and e2e_<gpu>.json already in --out-dir (made by "
                             "separate calls of the two benchmarks in one GPU session) instead of running them")
    parser.add_argument("--unet-json", type=Path, help="with --reuse: the UNet results to merge (default unet_<gpu>.json)")
    parser.add_argument("--e2e-json", type=Path, help="with --reuse: the e2e results to merge (default e2e_<gpu>.json)")
    parser.add_argument("--unet-variant", default=FAST_UNET_VARIANT,
                        help="the variant of the UNet results that is fast mode's forward "
                             f"(default {FAST_UNET_VARIANT}: as FastOptions sets it)")
    parser.add_argument("--e2e-cfg-pair", choices=("on", "off"),
                        help="with --reuse on a bench_e2e --cfg-pair-variants file: take fast mode's runs with "
                             "FastOptions.cfg_pair so set, and their fidelity")
    parser.add_argument("--cold-start-json", type=Path,
                        help="bench_cold_start results of the same session to merge (process walls)")
    parser.add_argument("--cold-start-variant", default="precompile",
                        help="the bench_cold_start variant that stands for fast mode (pycache: as a pip install, "
                             "with bytecode files)")
    parser.add_argument("--gpu", help="the GPU's name, with --reuse on a machine without it (else read from CUDA)")
    args = parser.parse_args()
    if not args.reuse and not (args.video and args.audio and args.landmarks):
        parser.error("--video, --audio and --landmarks are needed unless --reuse")
    gpu = args.gpu or torch.cuda.get_device_name(0)
    slug = "h100" if "H100" in gpu else "h200" if "H200" in gpu else gpu.lower().replace(" ", "_")
    work = args.out_dir
    unet_json, e2e_json = args.unet_json or work / f"unet_{slug}.json", args.e2e_json or work / f"e2e_{slug}.json"
    if not args.reuse:
        _run("bench.bench_unet", "--variants", "eager,compiled_graph", *UNET_FLAGS, "--out", str(unet_json))
        _run("bench.bench_e2e", "--video", args.video, "--audio", args.audio, "--landmarks", args.landmarks,
             "--out", str(e2e_json), "--host-variants", args.host_variants)
    unet, e2e = json.loads(unet_json.read_text()), json.loads(e2e_json.read_text())
    fast_unet, eager_unet = unet["variants"][args.unet_variant], unet["variants"]["eager"]
    ref, fast = e2e["modes"]["reference"], e2e["modes"]["fast"]
    runs, fidelity, peak_run = fast["runs"], e2e["fidelity_fast_vs_reference"], None
    if args.e2e_cfg_pair:
        setting = args.e2e_cfg_pair == "on"
        runs = [r for r in runs if r.get("cfg_pair") == setting]
        fidelity = e2e["fidelity_by_cfg_pair"][str(setting)]
        # Both settings' CUDA graphs stay alive in that one process: a run after the other
        # setting's first one carries its memory too, so the setting's own peak is its least.
        peak_run = min(runs, key=lambda r: r["peak_allocated_gb"])
    best_fast = min(runs, key=lambda r: r["wall_s"])
    peak_run = peak_run or best_fast
    measured = {
        "unet_forward_s": round(fast_unet["median_s"], 4),
        "unet_tflops": fast_unet["tflops"],
        "e2e_wall_s": best_fast["wall_s"],
        "peak_gpu_allocated_gb": peak_run["peak_allocated_gb"],
        "psnr_db": fidelity["psnr_db"],
        "ssim": fidelity["ssim"],
    }
    cold = json.loads(args.cold_start_json.read_text()) if args.cold_start_json else None
    if cold:
        # fast mode's default (the precompile variant, unless told) where the run compared variants
        walls = {p["name"]: cold_start.ready_wall_s(p) for p in cold["processes"]
                 if p.get("variant", "precompile") == args.cold_start_variant}
        measured["cold_start_first_s"], measured["cold_start_second_s"] = walls["first_process"], walls["second_process"]
    results = {
        "environment": e2e["environment"] if args.reuse else environment(),
        "targets": _verdict(measured),
        "side_by_side": {
            "unet_forward_eager_s": round(eager_unet["median_s"], 4),
            "unet_forward_fast_s": round(fast_unet["median_s"], 4),
            "unet_speedup": round(eager_unet["median_s"] / fast_unet["median_s"], 2),
            "e2e_reference_wall_s": ref["runs"][0]["wall_s"],
            "e2e_fast_wall_s": best_fast["wall_s"],
            "e2e_fast_best_host": best_fast.get("host"),
            "e2e_fast_wall_by_host_s": {h: min(r["wall_s"] for r in runs if r.get("host") == h)
                                        for h in {r.get("host") for r in runs}},
            "e2e_speedup": round(ref["runs"][0]["wall_s"] / best_fast["wall_s"], 2),
            "peak_allocated_reference_gb": ref["runs"][0]["peak_allocated_gb"],
            "peak_allocated_fast_gb": peak_run["peak_allocated_gb"],
            "fidelity": fidelity,
            "fast_one_time": {k: v for k, v in fast.items() if k.endswith("_s")},
            # every other variant against fast mode's, on walls ready for the first job
            "cold_start_ratios": _cold_start_ratios(cold, args.cold_start_variant) if cold else None,
        },
        "details": {"unet": unet_json.name, "unet_variant": args.unet_variant, "e2e": e2e_json.name,
                    "e2e_cfg_pair": args.e2e_cfg_pair,
                    "cold_start": args.cold_start_json.name if args.cold_start_json else None,
                    "cold_start_variant": args.cold_start_variant if cold else None},
    }
    save(results, work / f"{slug}.json")
    print(json.dumps(results["targets"], indent=1))


if __name__ == "__main__":
    main()
