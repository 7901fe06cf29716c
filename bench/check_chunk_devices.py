"""Per chunk: a device worker's output against the job process's own, at full size.

The job over several devices must give each chunk what a one-device job gives it. This
denoises `--chunks` random 16-frame chunks in the job process (the one-device job), then
again with every other chunk on a worker (`fastsync.job_devices`, as `run --devices`
does; on a machine with one GPU the worker shares it), and the worker's first chunk once
more with no chunk before it. It reports each chunk's largest difference, so a difference
is placed: in the skipped random numbers (only chunks after the first differ), or in the
worker's engine (its first chunk differs too).

    python -m bench.check_chunk_devices --device cuda:0 --worker cuda:0 --out $OUT/chunk_devices.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bench.common import environment, save
from fastsync.api import LipSync
from fastsync.denoise import SamplingOptions
from fastsync.engine import EngineOptions
from fastsync.job_devices import ChunkDevices
from fastsync.pipeline import make_denoiser
from fastsync.transfer import Download


def _inputs(count: int, resolution: int):
    g = torch.Generator().manual_seed(7)
    return [(torch.randint(0, 256, (16, 3, resolution, resolution), generator=g, dtype=torch.uint8),
             torch.randn(16, 50, 384, generator=g)) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--worker", default="cuda:0")
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--model-size", default="full")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--alone-only", type=Path, default=None,
                        help="only the one-device chunks, saved to this .npz (to compare two processes)")
    args = parser.parse_args()
    sampling = SamplingOptions()
    options = EngineOptions(random_weights=True, device=args.device, model_size=args.model_size)
    engine = LipSync.from_options(options)
    engine.warm_up(sampling)
    c = engine.components
    chunks = _inputs(args.chunks, options.resolution)

    here = make_denoiser(c, sampling)
    alone = [Download(here(faces, audio)).numpy() for faces, audio in chunks]
    if args.alone_only is not None:
        np.savez(args.alone_only, *alone)
        return

    devices = ChunkDevices(options, [args.worker], sampling)
    try:
        devices.begin_job(sampling)
        local = make_denoiser(c, sampling)
        split = []
        for k, (faces, audio) in enumerate(chunks):
            if k % 2 == 0:
                if k:
                    local.skip(16)
                split.append(Download(local(faces, audio)).numpy())
            else:
                # the worker skips the job process's chunk before this one
                split.append(devices.submit(0, k, [16], faces.numpy(), Download(audio), upcast=False).numpy())
        devices.begin_job(sampling)  # a fresh job: the worker's first chunk with nothing before it
        first = devices.submit(0, 0, [], chunks[0][0].numpy(), Download(chunks[0][1]), upcast=False).numpy()
    finally:
        devices.close()

    def worst(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max())

    result = {"environment": environment(), "chunks": args.chunks,
              "split_against_alone": [{"chunk": k, "on": "worker" if k % 2 else "job process",
                                       "max_abs_diff": worst(s, a)} for k, (s, a) in enumerate(zip(split, alone))],
              "worker_first_chunk_against_alone": worst(first, alone[0])}
    print(result, flush=True)
    save(result, args.out)


if __name__ == "__main__":
    main()
