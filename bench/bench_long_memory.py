"""Host memory over a long job: a synthetic 10-minute input through the real pipeline.

The clip is synthetic (moving shapes, 256x256) with a synthetic, non-silent audio track;
face landmarks come from a landmark cache that places a "face" in the middle of every
frame, so the run needs no face model. The UNet/VAE are the tiny random ones with
2 DDIM steps: this measures the *host* side (decode, alignment, chunk buffers, audio
features, paste-back, encoding), which is the same code on the GPU. RSS is sampled
every 0.5 s; the claim is that the peak does not grow with the clip's length.

    python -m bench.bench_long_memory --minutes 10 --out bench/results/long_memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from bench.common import environment, save

SIZE = 256


def make_clip(path: Path, seconds: float) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "30"}
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        for i in range(int(seconds * 25)):
            frame = np.zeros((SIZE, SIZE, 3), np.uint8)
            frame[..., 0] = (xx + 3 * i) % 256
            frame[..., 1] = (yy + 2 * i) % 256
            frame[..., 2] = 128 + 100 * np.sin((xx + yy + i) / 20)
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts, picture.time_base = i, Fraction(1, 25)
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))


def make_audio(path: Path, seconds: float) -> None:
    t = np.arange(int(seconds * 16000)) / 16000
    signal = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((signal * 32767).astype(np.int16).tobytes())


def make_landmarks(path: Path, video: Path, frames: int) -> None:
    from fastsync.face.cache import LandmarkCache
    from fastsync.face.dlib_backend import DlibLandmarker

    cache = LandmarkCache(path, video, DlibLandmarker.name)
    points = np.array([[100.0, 110.0], [156.0, 110.0], [128.0, 140.0]])
    for i in range(frames):
        cache.put(i, points, 1)
    cache.save()


def job(video: Path, audio: Path, landmarks: Path, output: Path, host: str = "threads") -> None:
    from fastsync.api import LipSync
    from fastsync.denoise import SamplingOptions
    from fastsync.engine import FastOptions

    engine = LipSync.load(random_weights=True, model_size="tiny", device="cpu",
                          fast=FastOptions(host_processes=host == "processes"))
    report = engine.run(video, audio, output, sampling=SamplingOptions(steps=2, deepcache_interval=0),
                        landmarks_cache=landmarks)
    print(json.dumps({"frames": report.frames, "seconds": report.seconds}))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pss_tree_mb(root: int, known: dict[int, str] | None = None) -> dict[str, float]:
    """Proportional set size of `root` and all its descendants (the fork server and the host
    workers with --host-processes), by role: shared pages are split among the processes that
    map them, so the sum is what the job really holds, unlike a sum of RSS. Roles: "job"
    (root), "forkserver", "resource_tracker", and the fork server's children in the order
    they started, "prepare" then "finish" (the job starts them in that order). `known` keeps
    each pid's role from one sample to the next, so the finishing process keeps its name
    once the prepare process has exited."""
    known = {} if known is None else known
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    roles: dict[str, float] = {}
    todo = [(root, "job")]
    while todo:
        pid, role = todo.pop()
        try:
            roles[role] = roles.get(role, 0.0) + _pss_mb(pid)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        kids = sorted(children.get(pid, []))
        if b"forkserver" in cmdline:
            fresh = iter(("prepare", "finish", *("other",) * len(kids)))
            for kid in kids:
                if kid not in known:
                    known[kid] = next(role for role in fresh if role not in known.values() or role == "other")
            todo += [(kid, known[kid]) for kid in kids]
        else:
            todo += [(kid, "forkserver" if b"forkserver" in _cmdline(kid) else
                      "resource_tracker" if b"resource_tracker" in _cmdline(kid) else f"{role}-child")
                     for kid in kids]
    return roles


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def measure(minutes: float, work: Path, real: tuple[Path, Path] | None = None, host: str = "threads") -> dict:
    """`real`: (video, its landmark cache) to loop ping-pong at its own size instead of the
    synthetic 256 px clip: the frame buffers are then the real job's (6 MB at 1080x1920)."""
    seconds = minutes * 60
    video, audio = work / f"clip_{minutes}m.mp4", work / f"audio_{minutes}m.wav"
    landmarks, output = work / f"landmarks_{minutes}m.json", work / f"out_{minutes}m.mp4"
    make_audio(audio, seconds)
    if real is None:
        make_clip(video, seconds)
        make_landmarks(landmarks, video, int(seconds * 25) + 1)
    else:
        video, landmarks = real
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_long_memory", "--job", str(video), str(audio),
                             str(landmarks), str(output), host], stdout=subprocess.PIPE, text=True)
    samples: list[tuple[float, float]] = []
    tree: list[dict[str, float]] = []
    roles_by_pid: dict[int, str] = {}
    started = time.perf_counter()

    def sample():
        while proc.poll() is None:
            try:
                samples.append((time.perf_counter() - started, rss_mb(proc.pid)))
                tree.append(pss_tree_mb(proc.pid, roles_by_pid))
            except OSError:
                break
            time.sleep(0.5)

    thread = threading.Thread(target=sample)
    thread.start()
    stdout, _ = proc.communicate()
    thread.join()
    rss = [r for _, r in samples]
    quarter = len(rss) // 4
    totals = [sum(t.values()) for t in tree]
    roles = sorted({role for t in tree for role in t})
    return {
        "minutes": minutes, "job": json.loads(stdout.strip().splitlines()[-1]),
        "peak_rss_mb": round(max(rss), 1),
        "peak_rss_mb_by_quarter": [round(max(rss[i * quarter:(i + 1) * quarter] or [0]), 1) for i in range(4)],
        "samples": len(rss), "host": host,
        "peak_pss_tree_mb": round(max(totals), 1),
        "peak_pss_tree_mb_by_quarter": [round(max(totals[i * quarter:(i + 1) * quarter] or [0]), 1) for i in range(4)],
        # each role's own peak by quarter: which process, if any, grows with the job's length
        "peak_pss_mb_by_role_and_quarter": {
            role: [round(max([t.get(role, 0.0) for t in tree[i * quarter:(i + 1) * quarter]] or [0]), 1)
                   for i in range(4)] for role in roles},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10])
    parser.add_argument("--out", type=Path, default=Path("bench/results/long_memory_cpu.json"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/fastsync-long"))
    parser.add_argument("--video", type=Path, default=None,
                        help="loop this clip (e.g. demo1, 1080x1920) instead of the synthetic 256 px one")
    parser.add_argument("--landmarks", type=Path, default=None, help="the landmark cache of --video")
    parser.add_argument("--host", choices=["threads", "processes"], default="threads",
                        help="fast mode's host stages (FastOptions.host_processes)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    real = None if args.video is None else (args.video, args.landmarks)
    results = {"environment": environment(), "clip": str(args.video or "synthetic 256x256"), "runs": []}
    for minutes in args.minutes:
        results["runs"].append(measure(minutes, args.work, real, args.host))
        print(results["runs"][-1], flush=True)
        save(results, args.out)


if __name__ == "__main__":
    if "--job" in sys.argv:
        i = sys.argv.index("--job")
        job(*(Path(p) for p in sys.argv[i + 1:i + 5]), sys.argv[i + 5])
    else:
        main()
