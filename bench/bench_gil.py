"""How long each host step of a job holds the GIL, measured by a heartbeat thread.

In fast mode's threaded pipeline the thread that drives the GPU shares one interpreter
lock with the decode+warp and paste+encode threads. A step that keeps the lock through a
long C call makes every other thread wait for it, however many cores are free. Here a
heartbeat thread asks for the lock every 0.2 ms while one step runs in the main thread on
demo1 frames; its lateness is the time the step kept the lock. Idle, a beat is ~0.1 ms
late. No GPU is needed: the steps are the host ones.

    python -m bench.bench_gil --video demo1_video.mp4 --out bench/results/gil_cpu.json
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from bench.common import environment, save
from fastsync.face.align import Aligner, warp_face
from fastsync.face.restore import paste_back
from fastsync.media.video import iter_frames_25fps

BEAT_S = 0.0002
POINTS = np.array([[450.0, 800.0], [630.0, 800.0], [540.0, 900.0]])  # a face in demo1's frame


def heartbeat_delays(step) -> tuple[float, np.ndarray]:
    """(wall seconds of `step()`, each beat's lateness in seconds while it ran)."""
    late: list[float] = []
    stop = threading.Event()

    def beat():
        while not stop.is_set():
            started = time.perf_counter()
            time.sleep(BEAT_S)
            late.append(time.perf_counter() - started - BEAT_S)

    thread = threading.Thread(target=beat)
    thread.start()
    started = time.perf_counter()
    step()
    wall = time.perf_counter() - started
    stop.set()
    thread.join()
    return wall, np.array(late)


def summary(wall: float, late: np.ndarray, frames: int) -> dict:
    ms = late * 1e3
    return {"ms_per_frame": round(wall / frames * 1e3, 2), "beats": int(ms.size),
            "late_ms_p50": round(float(np.median(ms)), 3), "late_ms_p99": round(float(np.percentile(ms, 99)), 3),
            "late_ms_max": round(float(ms.max()), 2),
            # the share of the step's wall during which the heartbeat could not run
            "gil_held_share": round(float(np.clip(ms - np.median(ms), 0, None).sum() / (wall * 1e3)), 3)}


def steps(frames: list[np.ndarray]) -> dict:
    affine = Aligner(512).next_matrix(POINTS)
    face = torch.rand((3, 512, 512), generator=torch.Generator().manual_seed(0)) * 2 - 1
    height, width = frames[0].shape[:2]
    container = av.open(tempfile.mktemp(suffix=".mp4"), "w")
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"crf": "18", "preset": "medium"}
    pictures: list = []

    def reformat():  # what VideoWriter.write does before encoding (swscale, bicubic)
        pictures[:] = [av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p",
                                                                               interpolation="BICUBIC")
                       for f in frames]

    def encode():
        for i, picture in enumerate(pictures):
            picture.pts, picture.time_base = i, Fraction(1, 25)
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))
        container.close()

    return {"idle": lambda: time.sleep(0.5), "warp": lambda: [warp_face(f, affine, 512) for f in frames],
            "paste": lambda: [paste_back(f, face, affine) for f in frames], "rgb_to_yuv": reformat,
            "x264": encode}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    frames = list(iter_frames_25fps(args.video, max_frames=args.frames))
    results = {"environment": environment(), "frames": len(frames), "torch_threads": torch.get_num_threads(),
               "steps": {}}
    for name, step in steps(frames).items():
        results["steps"][name] = summary(*heartbeat_delays(step), len(frames))
        print(name, results["steps"][name], flush=True)
    save(results, args.out)


if __name__ == "__main__":
    main()
