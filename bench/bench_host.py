"""The host side of the demo1 job without the model: where fast mode's CPU time goes.

In fast mode the GPU, the decode+warp thread and the paste+encode thread each take about
20 s of the job, against 6 s and 7 s for the same host work run serially in reference
mode. This times each host step alone (serial), then the two host pipelines in threads
at once as fast mode runs them (no GPU work), with the libraries' default intra-op
threads and with one. If the threaded figures stay near the serial ones, the slowdown
comes from running beside the GPU thread; if they grow, from the host steps competing
for the GIL or the cores among themselves.

    python -m bench.bench_host --video demo1_video.mp4 --landmarks demo1_landmarks.json --out host.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import environment, save
from fastsync.accel.setup import set_cpu_threads
from fastsync.face.align import Aligner, warp_face
from fastsync.face.restore import paste_back
from fastsync.media.video import iter_frames_25fps
from fastsync.media.writer import VideoWriter

RES = 512


def load_affines(landmarks: Path, n: int) -> list[np.ndarray]:
    entries = json.loads(landmarks.read_text())["frames"]
    aligner = Aligner(RES)
    return [aligner.next_matrix(np.array(entries[str(i)][0])) for i in range(n)]


def decode_and_warp(video: Path, affines: list[np.ndarray], timings: dict) -> tuple[list, list]:
    frames, faces, decode_s, warp_s = [], [], 0.0, 0.0
    started = time.perf_counter()
    for frame, affine in zip(iter_frames_25fps(video, max_frames=len(affines)), affines):
        decoded = time.perf_counter()
        decode_s += decoded - started
        faces.append(warp_face(frame, affine, RES))
        frames.append(frame)
        started = time.perf_counter()
        warp_s += started - decoded
    timings.update(decode_s=round(decode_s, 3), warp_s=round(warp_s, 3))
    return frames, faces


def paste_and_encode(frames: list, faces: list, affines: list, timings: dict) -> None:
    height, width = frames[0].shape[:2]
    paste_s = encode_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        writer = VideoWriter(Path(tmp) / "out.mp4", width, height, preset="medium")
        for frame, face, affine in zip(frames, faces, affines):
            started = time.perf_counter()
            face_f = torch.from_numpy(face).permute(2, 0, 1).float() / 127.5 - 1
            pasted = paste_back(frame, face_f.numpy(), affine)
            pasted_at = time.perf_counter()
            writer.write(pasted)
            paste_s += pasted_at - started
            encode_s += time.perf_counter() - pasted_at
        started = time.perf_counter()
        writer.close()
        encode_s += time.perf_counter() - started
    timings.update(paste_s=round(paste_s, 3), encode_s=round(encode_s, 3))


def serial(video: Path, affines: list) -> dict:
    timings: dict = {}
    started = time.perf_counter()
    frames, faces = decode_and_warp(video, affines, timings)
    paste_and_encode(frames, faces, affines, timings)
    timings["wall_s"] = round(time.perf_counter() - started, 3)
    return timings


def threaded(video: Path, affines: list) -> dict:
    """Decode+warp of a second copy of the clip and paste+encode of the first, at once:
    the two host pipelines of fast mode, each with its own timings."""
    first: dict = {}
    frames, faces = decode_and_warp(video, affines, first)
    producer, consumer = {}, {}
    workers = [threading.Thread(target=decode_and_warp, args=(video, affines, producer)),
               threading.Thread(target=paste_and_encode, args=(frames, faces, affines, consumer))]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"decode_warp_thread": producer, "paste_encode_thread": consumer,
            "wall_s": round(time.perf_counter() - started, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--landmarks", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=242)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    affines = load_affines(args.landmarks, args.frames)
    results = {"environment": environment(), "frames": args.frames, "runs": {}}
    for threads in (0, 1):
        set_cpu_threads(threads)
        name = "default_threads" if threads == 0 else f"{threads}_thread"
        results["runs"][name] = {"serial": serial(args.video, affines), "threaded": threaded(args.video, affines)}
        print(name, json.dumps(results["runs"][name]), flush=True)
        save(results, args.out)
    set_cpu_threads(0)


if __name__ == "__main__":
    main()
