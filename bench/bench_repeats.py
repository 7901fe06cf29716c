"""Does encoding repeated faces once (FastOptions.repeated_faces) shorten a photo's chunks?

The demo1 photo job was slower with the switch on (`e2e_h100_photo.json`), against the
prediction. This times the chunk denoiser alone, in one process, models warm: chunks of 16
equal faces (a photo) and, for the no-repeat path, 16 different faces, with the switch on
and off in turn, and a short chunk of 2 equal faces as a job's last. Each chunk's wall is
taken between two synchronisations; one chunk of each kind is also profiled, giving its
summed kernel time and top kernels.

    python -m bench.bench_repeats --out $OUT/repeats_h100.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bench.common import environment, save


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _chunk(denoiser, faces, audio) -> float:
    _sync()
    t0 = time.perf_counter()
    denoiser(faces, audio)
    _sync()
    return time.perf_counter() - t0


def _profile(denoiser, faces, audio, top: int) -> dict:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                            torch.profiler.ProfilerActivity.CPU]) as prof:
        denoiser(faces, audio)
        _sync()
    rows = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    rows.sort(key=lambda e: e.self_device_time_total, reverse=True)
    return {"kernel_ms": round(sum(e.self_device_time_total for e in rows) / 1e3, 2),
            "top": [{"op": e.key[:80], "calls": e.count, "ms": round(e.self_device_time_total / 1e3, 2)}
                    for e in rows[:top]]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/repeats.json"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--chunks", type=int, default=4, help="chunks in a row per round and switch")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model-size", default="full")
    args = parser.parse_args()

    from fastsync.api import LipSync
    from fastsync.accel.repeats import RepeatedFaces
    from fastsync.denoise import SamplingOptions
    from fastsync.engine import EngineOptions
    from fastsync.pipeline import make_denoiser

    sampling = SamplingOptions()
    engine = LipSync.from_options(EngineOptions(random_weights=True, device=args.device, model_size=args.model_size))
    engine.warm_up(sampling)
    c = engine.components
    res = c.options.resolution
    g = torch.Generator().manual_seed(5)
    face = torch.randint(0, 256, (1, 3, res, res), generator=g, dtype=torch.uint8)
    kinds = {
        "photo": face.expand(16, -1, -1, -1).contiguous(),
        "different": torch.randint(0, 256, (16, 3, res, res), generator=g, dtype=torch.uint8),
        "short_photo": face.expand(2, -1, -1, -1).contiguous(),
    }
    audio = {k: torch.randn(v.shape[0], 50, 384, generator=g) for k, v in kinds.items()}

    def denoiser(on: bool):
        d = make_denoiser(c, sampling)
        d.repeats = RepeatedFaces() if on else None
        return d

    times: dict[str, list[float]] = {}
    with torch.no_grad():
        for _ in range(args.rounds):
            for on in (True, False):
                for kind in ("photo", "different"):
                    d = denoiser(on)
                    spans = [_chunk(d, kinds[kind], audio[kind]) for _ in range(args.chunks)]
                    key = f"{kind}[{'on' if on else 'off'}]"
                    times.setdefault(f"{key} first", []).append(spans[0])
                    times.setdefault(f"{key} later", []).extend(spans[1:])
                    spans = _chunk(d, kinds["short_photo"], audio["short_photo"])
                    times.setdefault(f"short_photo after {key}", []).append(spans)
        profiles = {}
        for on in (True, False):
            d = denoiser(on)
            _chunk(d, kinds["photo"], audio["photo"])  # so the profiled chunk is a later one
            profiles[f"photo[{'on' if on else 'off'}] later"] = _profile(d, kinds["photo"], audio["photo"], args.top)
    summary = {k: {"median_s": round(statistics.median(v), 4), "min_s": round(min(v), 4), "n": len(v)}
               for k, v in times.items()}
    for k, v in summary.items():
        print(f"{k:40s} {v}")
    for k, v in profiles.items():
        print(k, v["kernel_ms"], "ms of kernels")
    save({"environment": environment(), "chunks": summary, "raw_s": times, "profiles": profiles}, args.out)


if __name__ == "__main__":
    main()
