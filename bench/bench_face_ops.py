"""Host face work per frame on demo1 frames, side by side in one process (no GPU needed).

- warps of a 16-frame chunk in FaceTracker: one at a time vs in the 4 face-worker threads;
- bilinear sampling of an image and its coverage: two grid_sample calls (the old way)
  vs one call with a ones channel (`fastsync.face.align.sample_bilinear`);
- paste-back of one generated face, per frame.

    python -m bench.bench_face_ops --video demo1_video.mp4 --out bench/results/face_ops_cpu.json
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import environment, save
from fastsync.chunks import FaceTracker
from fastsync.face.align import Aligner, sample_bilinear
from fastsync.face.cache import LandmarkCache
from fastsync.face.restore import paste_back
from fastsync.media.video import iter_frames_25fps

POINTS = np.array([[450.0, 800.0], [630.0, 800.0], [540.0, 900.0]])  # a face in demo1's frame
STEP = 16


class _NoDetector:  # every landmark comes from the cache
    detect = None


def warp_ms(video: Path, frames: list[np.ndarray], workers: ThreadPoolExecutor | None) -> float:
    cache = LandmarkCache(None, video, "bench")
    for i in range(len(frames)):
        cache.put(i, POINTS + 0.3 * i, 1)
    tracker = FaceTracker(_NoDetector(), 512, workers, cache)
    started = time.perf_counter()
    for k in range(0, len(frames), STEP):
        tracker.process(list(range(k, k + STEP)), frames[k:k + STEP])
    return (time.perf_counter() - started) / len(frames) * 1e3


def _two_calls(image, grid, fill):
    inside = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    ones = torch.ones((1, 1, *image.shape[2:]), dtype=image.dtype)
    coverage = F.grid_sample(ones, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return inside + (1.0 - coverage) * fill, coverage


def sampling_ms(fn, repeat: int = 40) -> float:
    gen = torch.Generator().manual_seed(0)
    image = torch.rand((1, 3, 700, 560), generator=gen) * 255  # about a crop's source window
    grid = torch.rand((1, 560, 420, 2), generator=gen) * 2 - 1  # a 420 x 560 crop
    fn(image, grid, 127.0)
    started = time.perf_counter()
    for _ in range(repeat):
        fn(image, grid, 127.0)
    return (time.perf_counter() - started) / repeat * 1e3


def paste_ms(frames: list[np.ndarray]) -> float:
    affine = Aligner(512).next_matrix(POINTS)
    face = torch.rand((3, 512, 512), generator=torch.Generator().manual_seed(1)) * 2 - 1
    paste_back(frames[0], face, affine)
    started = time.perf_counter()
    for frame in frames:
        paste_back(frame, face, affine)
    return (time.perf_counter() - started) / len(frames) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    frames = list(iter_frames_25fps(args.video, max_frames=args.frames // STEP * STEP))
    with ThreadPoolExecutor(4) as pool:
        serial, pooled = warp_ms(args.video, frames, None), warp_ms(args.video, frames, pool)
    two, one = sampling_ms(_two_calls), sampling_ms(sample_bilinear)
    results = {
        "environment": environment(), "frames": len(frames), "torch_threads": torch.get_num_threads(),
        "warp_ms_per_frame": {"one_at_a_time": round(serial, 2), "face_workers_4": round(pooled, 2),
                              "ratio": round(serial / pooled, 2)},
        "sampling_ms_per_crop": {"two_grid_samples": round(two, 2), "one_with_ones_channel": round(one, 2),
                                 "ratio": round(two / one, 2)},
        "paste_ms_per_frame": round(paste_ms(frames), 2),
    }
    print(results, flush=True)
    save(results, args.out)


if __name__ == "__main__":
    main()
