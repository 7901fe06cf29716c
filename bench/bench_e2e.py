"""End-to-end: the demo1 job in reference mode and in fast mode, side by side, one process.

Random full-size weights (same seed for both modes), 512 px, 20 DDIM steps, guidance 1.5,
DeepCache interval 3. Face landmarks come from a landmark cache made beforehand by the
same dlib landmarker on the CPU (the GPU machine has no dlib model): both modes read
the same cache, so face *detection* is excluded from both; alignment, warping and
paste-back are included. Writes a JSON with every figure and the side-by-side ratios.

    python -m bench.bench_e2e --video V --audio A --landmarks L --out bench/results/e2e.json

`--chunk-devices cuda:1` adds, after the fast runs, the same job with its chunks also
denoised on those devices (`run --devices`), and its output against the one-device job's.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import resource
import time
from pathlib import Path

import torch

from bench.common import environment, save
from fastsync import stages
from fastsync.accel.setup import set_cpu_threads
from fastsync.api import LipSync
from fastsync.denoise import SamplingOptions
from fastsync.engine import EngineOptions, FastOptions
from fastsync.tools.quality import compare_videos


# FastOptions switches settable from the command line, each as on/off
LOAD_SWITCHES = ("split_linear_bias", "compile_glue")


def run_mode(mode: str, args, sampling: SamplingOptions, fast: FastOptions, runs: int) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    if mode == "fast" and "processes" in args.host_variants:
        from fastsync.host_processes import warm_up

        # What prepare_fast does when the option is on from the start: the fork server
        # imports the host modules (torch among them, ~4 s) while the weights load. Started
        # after the load instead, the first job waited those seconds for its first face
        # (bench/results/e2e_h200_first_job_timeline.json).
        warm_up()
    started = time.perf_counter()
    engine = LipSync.from_options(EngineOptions(random_weights=True, device="cuda", mode=mode, fast=fast))
    torch.cuda.synchronize()
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    warm = engine.warm_up(sampling)
    warm_s = time.perf_counter() - started
    result = {"load_s": round(load_s, 2), "warm_up_s": round(warm_s, 2), **warm, "dtype": str(engine.components.dtype),
              "runs": []}
    plan = [(0, None, "threads", None, None, None)] * runs if mode == "reference" else [
        (t, q, h, v, c, r) for t in args.cpu_threads_variants for q in args.max_queued_variants
        for h in args.host_variants for v in args.vae_micro_batch_variants for c in args.cfg_pair_variants
        for r in args.repeated_faces_variants] * runs
    for k, (cpu_threads, max_queued, host, vae_micro_batch, cfg_pair, repeated) in enumerate(plan):
        if mode == "fast":
            set_cpu_threads(cpu_threads)
            options = engine.components.options
            changes = {"host_processes": host == "processes"}
            if max_queued is not None:
                changes["max_queued"] = max_queued
            if vae_micro_batch is not None:
                changes["vae_micro_batch"] = vae_micro_batch
            if cfg_pair is not None:
                changes["cfg_pair"] = cfg_pair
            if repeated is not None:
                changes["repeated_faces"] = repeated
            engine.components.options = dataclasses.replace(options, fast=dataclasses.replace(options.fast, **changes))
        torch.cuda.reset_peak_memory_stats()
        clock = stages.StageClock()
        output = args.work / f"{mode}_{k}.mp4"
        timeline = Timeline()
        torch.cuda.synchronize()
        started = timeline.started = time.perf_counter()
        report = engine.run(args.video, args.audio, output, sampling=sampling, clock=clock,
                            landmarks_cache=args.landmarks, on_progress=timeline)
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
        result["runs"].append({
            "cpu_threads": cpu_threads or None, "host": host if mode == "fast" else None,
            "max_queued": engine.components.options.fast.max_queued if mode == "fast" else None,
            "vae_micro_batch": engine.components.options.fast.vae_micro_batch if mode == "fast" else None,
            "cfg_pair": engine.components.options.fast.cfg_pair if mode == "fast" else None,
            "repeated_faces": engine.components.options.fast.repeated_faces if mode == "fast" else None,
            "output": str(output),
            "wall_s": round(wall, 3), "frames": report.frames, "frames_per_s": round(report.frames / wall, 2),
            "stage_busy_s": clock.as_dict(),
            "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3),
            "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 3),
            **_regions_compiled(engine),
            "progress_s": timeline.as_dict(),
            # each chunk's GPU span and the GPU's idle time, in seconds from the job's start
            # (fastsync.timeline; until 2026-12-06 the keys were gpu_busy_s and "gpu")
            "gpu_timeline_s": report.timeline,
            "progress_events_s": timeline.events,
        })
        result["output"], result["mouth_boxes"] = str(output), report.mouth_boxes
        print(mode, {k: v for k, v in result["runs"][-1].items() if k not in ("gpu_timeline_s", "progress_events_s")},
              {k: v for k, v in result["runs"][-1]["gpu_timeline_s"].items() if k != "chunks"}, flush=True)
    if mode == "fast" and len(result["runs"]) > 1:  # is the job the same from run to run (x264 threads included)?
        result["first_run_against_last"] = compare_videos(Path(result["runs"][0]["output"]),
                                                          Path(result["runs"][-1]["output"])).as_dict()
        print("fast, first run against last", result["first_run_against_last"], flush=True)
    if mode == "fast" and args.chunk_devices:
        result["chunk_devices"] = _on_several_devices(engine, args, sampling, runs, Path(result["output"]))
    engine.close()
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return result


class Timeline:
    """When each stage reported its first and its last frames, in seconds from the job's
    start: where a slow job waits (a late first chunk, a long tail after the GPU's last).
    `events` keeps every report, (seconds, frames done so far), per stage."""

    def __init__(self):
        self.started = time.perf_counter()
        self.events: dict[str, list[tuple[float, int]]] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.events.setdefault(stage, []).append((round(time.perf_counter() - self.started, 3), done))

    def as_dict(self) -> dict:
        return {stage: {"first": marks[0][0], "last": marks[-1][0]} for stage, marks in self.events.items()}


def _on_several_devices(engine, args, sampling: SamplingOptions, runs: int, one_device_output: Path) -> dict:
    """The same engine's job with its chunks also denoised on `--chunk-devices` (run --devices):
    the workers' start (load, warm-up from this process's compiled blocks), each run's wall
    and chunks per device, and the output against the one-device job's."""
    options = engine.components.options
    engine.components.options = dataclasses.replace(options, chunk_devices=tuple(args.chunk_devices))
    started = time.perf_counter()
    engine.start_devices(sampling)
    result = {"devices": [engine.devices.own_label, *engine.devices.labels],
              "workers_ready_s": round(time.perf_counter() - started, 2), "runs": []}
    for k in range(runs):
        output = args.work / f"fast_devices_{k}.mp4"
        torch.cuda.synchronize()
        started = time.perf_counter()
        report = engine.run(args.video, args.audio, output, sampling=sampling, landmarks_cache=args.landmarks)
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
        result["runs"].append({"wall_s": round(wall, 3), "frames_per_s": round(report.frames / wall, 2),
                               "chunks_per_device": report.chunks_per_device,
                               "own_device_timeline_s": {k: v for k, v in report.timeline.items() if k != "chunks"}})
        print("fast on", result["devices"], result["runs"][-1], flush=True)
    result["against_one_device"] = compare_videos(one_device_output, output).as_dict()
    engine.components.options = options
    return result


def _regions_compiled(engine) -> dict:
    """Regions compiled so far in this process: a job after the warm-up should add none."""
    store = engine.components.cache.get("region_compiler")
    return {} if store is None else {"regions_compiled_so_far": store.stats.compiled}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--audio", type=Path, required=True)
    parser.add_argument("--landmarks", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fastsync-bench"))
    parser.add_argument("--modes", default="reference,fast")
    parser.add_argument("--fast-runs", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-graphs", action="store_true")
    parser.add_argument("--cpu-threads-variants", type=lambda v: [int(x) for x in v.split(",")], default=[0],
                        help="fast mode: one run per value of FastOptions.cpu_threads (0: library default)")
    parser.add_argument("--max-queued-variants", type=lambda v: [int(x) for x in v.split(",")], default=[None],
                        help="fast mode: one run per value of FastOptions.max_queued (default: as configured)")
    # processes: what a fast job on a GPU runs by default (FastOptions.host_processes=None)
    parser.add_argument("--host-variants", type=lambda v: v.split(","), default=["processes"],
                        help="fast mode: one run per host-stage variant, threads and/or processes "
                             "(FastOptions.host_processes)")
    parser.add_argument("--vae-micro-batch-variants", type=lambda v: [int(x) for x in v.split(",")],
                        default=[None], help="fast mode: one run per value of FastOptions.vae_micro_batch "
                                             "(a size the warm-up did not compile compiles in its first run)")
    parser.add_argument("--cfg-pair-variants", type=lambda v: [x == "on" for x in v.split(",")], default=[None],
                        help="fast mode: on,off = one run each with FastOptions.cfg_pair on and off (the warm-up "
                             "compiles only the engine's own setting; the other compiles in its first run); "
                             "the fidelity is then given for each setting's last run")
    parser.add_argument("--repeated-faces-variants", type=lambda v: [x == "on" for x in v.split(",")],
                        default=[None], help="fast mode: on,off = one run each with FastOptions.repeated_faces "
                                             "on and off (a photo as --video: its face encoded once or per frame)")
    parser.add_argument("--chunk-devices", type=lambda v: v.split(","), default=None,
                        help="fast mode: after its runs, the same job with its chunks also denoised on these "
                             "devices (cuda:1,cuda:2: run --devices), as many runs, in the same process")
    for switch in LOAD_SWITCHES:
        parser.add_argument("--" + switch.replace("_", "-"), choices=("on", "off"),
                            help=f"fast mode's FastOptions.{switch} (default: as configured); set at load, "
                                 "so compare the two settings in two processes")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    # cudnn.benchmark stays at PyTorch's default (off, as in the reference) unless fast mode's
    # FastOptions.cudnn_benchmark turns it on (off by default); the reference mode runs first.
    sampling = SamplingOptions()  # official settings: 20 steps, guidance 1.5, DeepCache 3, seed 1247
    fast = FastOptions(compile=not args.no_compile, cuda_graphs=not args.no_graphs)
    fast = dataclasses.replace(fast, **{s: getattr(args, s) == "on" for s in LOAD_SWITCHES if getattr(args, s)})
    results = {"environment": environment(), "settings": {"resolution": 512, **sampling.__dict__},
               "fast_options": fast.__dict__, "modes": {}}
    for mode in args.modes.split(","):
        results["modes"][mode] = run_mode(mode, args, sampling, fast, 1 if mode == "reference" else args.fast_runs)
        save(results, args.out)
    if {"reference", "fast"} <= set(results["modes"]):
        ref, fast_r = results["modes"]["reference"], results["modes"]["fast"]
        quality = compare_videos(Path(ref["output"]), Path(fast_r["output"]), ref["mouth_boxes"])
        results["fidelity_fast_vs_reference"] = quality.as_dict()
        if len(args.cfg_pair_variants) > 1:  # each setting's last run, against the same reference
            def fidelity(run: dict) -> dict:  # the job's last run is compared above already
                if run["output"] == fast_r["output"]:
                    return results["fidelity_fast_vs_reference"]
                return compare_videos(Path(ref["output"]), Path(run["output"]), ref["mouth_boxes"]).as_dict()

            results["fidelity_by_cfg_pair"] = {
                str(setting): fidelity(last) for setting, last in {r["cfg_pair"]: r for r in fast_r["runs"]}.items()}
            print("fidelity by cfg_pair", results["fidelity_by_cfg_pair"], flush=True)
        ref_wall = ref["runs"][0]["wall_s"]
        best_fast = min(r["wall_s"] for r in fast_r["runs"])
        results["ratios"] = {
            "e2e_wall_reference_over_fast": round(ref_wall / best_fast, 2),
            "peak_allocated_reference_over_fast": round(
                ref["runs"][0]["peak_allocated_gb"] / min(r["peak_allocated_gb"] for r in fast_r["runs"]), 2),
        }
        print("fidelity", results["fidelity_fast_vs_reference"], "ratios", results["ratios"], flush=True)
    for mode in results["modes"].values():
        mode.pop("mouth_boxes", None)
    results["host_peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    save(results, args.out)


if __name__ == "__main__":
    main()
