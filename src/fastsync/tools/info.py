"""`fastsync info`: what this machine offers fastsync, for a first check or a bug report.

Versions (fastsync, Python, the libraries it runs on, the ffmpeg inside PyAV), the devices
torch sees, which checkpoint files of the official layout are in place and which are
missing (with the command that fetches them), the face backend that `auto` would pick, and
the compiled blocks kept on disk. Nothing is loaded onto a device and nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from fastsync import __version__
from fastsync.checkpoints import FACE_FILES, VAE_FILES, CheckpointLayout

# Distributions whose versions matter to a report (absent ones say so).
PACKAGES = ("torch", "triton", "diffusers", "huggingface_hub", "av", "numpy", "opencv-python-headless",
            "onnxruntime", "onnxruntime-gpu", "dlib", "dlib-bin", "gradio")


def gather(checkpoint_dir: Path, version: str) -> dict:
    return {"fastsync": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "packages": _packages(), "devices": _devices(),
            "checkpoints": _checkpoints(Path(checkpoint_dir), version), "compiled_blocks": _compiled_blocks()}


def _packages() -> dict:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    import av
    import torch

    found["torch_cuda"] = torch.version.cuda or "none (a CPU build of torch)"
    found["ffmpeg (PyAV)"] = ".".join(map(str, av.library_versions.get("libavcodec", ())))
    return found


def _devices() -> dict:
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"device": f"cuda:{i}", "name": p.name, "memory_gb": round(p.total_memory / 1e9, 1),
                         "capability": f"{p.major}.{p.minor}"})
    return {"cpu_cores": os.cpu_count(), "cuda": gpus}


def _checkpoints(root: Path, version: str) -> dict:
    from fastsync.face.landmarks import insightface_available

    layout = CheckpointLayout(root)
    required = [layout.unet, layout.whisper, *(layout.vae_dir / f for f in VAE_FILES)]
    optional = [layout.face_dir / f for f in FACE_FILES]  # without them the dlib backend is used
    rows = [{"path": str(path.relative_to(root)), "present": path.is_file(), "optional": path in optional,
             "mb": round(path.stat().st_size / 1e6, 1) if path.is_file() else None} for path in required + optional]
    missing = [row["path"] for row in rows if not row["present"] and not row["optional"]]
    return {"dir": str(root), "version": version, "files": rows, "missing": missing,
            "fetch": f"fastsync download --version {version} --dir {root}" if missing else None,
            "face_backend_auto": "insightface" if insightface_available(root) else "dlib"}


def _compiled_blocks() -> dict:
    # accel.compile.regions_dir without configuring inductor (which imports it)
    from fastsync.accel.compile import DEFAULT_CACHE_DIR

    folder = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR", DEFAULT_CACHE_DIR)) / "fastsync-regions"
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return {"dir": str(folder), "files": len(files), "mb": round(sum(p.stat().st_size for p in files) / 1e6, 1)}


def render(info: dict) -> str:
    lines = [f"fastsync {info['fastsync']}, Python {info['python']}, {info['platform']}", "", "packages:"]
    lines += [f"  {name:24s} {version or 'not installed'}" for name, version in info["packages"].items()]
    devices = info["devices"]
    lines += ["", f"devices: {devices['cpu_cores']} CPU cores"]
    lines += [f"  {g['device']}: {g['name']}, {g['memory_gb']} GB, compute capability {g['capability']}"
              for g in devices["cuda"]] or ["  no CUDA device: fast mode's compilation and CUDA graphs need one"]
    c = info["checkpoints"]
    lines += ["", f"checkpoints in {c['dir']} (LatentSync {c['version']}):"]
    for row in c["files"]:
        state = "ok" if row["present"] else "absent" if row["optional"] else "MISSING"
        note = f"  {row['mb']} MB" if row["present"] else "  (optional: InsightFace's; dlib is used without it)" \
            if row["optional"] else ""
        lines.append(f"  {state:8s}{row['path']}{note}")
    if c["missing"]:
        lines.append(f"  fetch them with: {c['fetch']} (or run with --random-weights)")
    lines.append(f"  face backend 'auto' picks: {c['face_backend_auto']}")
    b = info["compiled_blocks"]
    lines += ["", f"compiled blocks kept: {b['files']} file(s), {b['mb']} MB in {b['dir']}"]
    return "\n".join(lines)


def info_from_args(args) -> int:
    info = gather(args.checkpoint_dir, args.version)
    print(json.dumps(info, indent=1) if args.json else render(info))
    return 0
