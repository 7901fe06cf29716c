"""Does one fast-mode engine give the same job the same frames every time?

Runs the job several times on one warmed engine, each written losslessly (crf 0, so the
decoded frames are the pipeline's own), then lists, for each later run against the first
and against the one before, the frames that differ, with their largest pixel difference.
The first run is the first to meet the job's short last chunk (its shape runs eagerly),
so a difference confined to that chunk's frames points there.

    python -m bench.check_rerun --video demo1_video.mp4 --audio demo1_audio.wav \\
        --landmarks demo1_landmarks.json --out bench/results/rerun_h100.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.common import environment, save
from fastsync.api import LipSync
from fastsync.denoise import SamplingOptions
from fastsync.engine import EngineOptions
from fastsync.media.video import iter_frames_25fps
from fastsync.output import OutputOptions


def frame_differences(path_a: Path, path_b: Path) -> list[dict]:
    """[{frame, pixels, max}] for every frame whose decoded pixels differ."""
    out = []
    for i, (a, b) in enumerate(zip(iter_frames_25fps(path_a), iter_frames_25fps(path_b), strict=True)):
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
        if diff.any():
            out.append({"frame": i, "pixels": int((diff > 0).sum()), "max": int(diff.max())})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--video", required=True)
    parser.add_argument("--audio", required=True)
    parser.add_argument("--landmarks", required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fastsync-rerun"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model-size", default="full", help="tiny: a quick check of the script on a CPU")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    engine = LipSync.from_options(EngineOptions(random_weights=True, device=args.device, mode="fast",
                                                  model_size=args.model_size))
    sampling = SamplingOptions()
    engine.warm_up(sampling)
    outputs, frames = [], None
    for k in range(args.runs):
        output = args.work / f"run_{k}.mp4"
        report = engine.run(args.video, args.audio, output, sampling=sampling, landmarks_cache=args.landmarks,
                            encoding=OutputOptions(crf=0))
        outputs.append(output)
        frames = report.frames
        print("run", k, "done", flush=True)
    pairs = {}
    for k in range(1, args.runs):
        for j in sorted({0, k - 1}):
            pairs[f"{j}_vs_{k}"] = differing = frame_differences(outputs[j], outputs[k])
            print(f"run {j} vs {k}: {len(differing)} frames differ", differing[:20], flush=True)
    engine.close()
    save({"environment": environment(), "frames": frames, "chunk_frames": sampling.num_frames,
          "differing_frames": pairs}, args.out)


if __name__ == "__main__":
    main()
