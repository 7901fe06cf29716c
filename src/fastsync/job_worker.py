"""One further device's worker process for a single job's chunks (fastsync.job_devices).

The worker loads its engine once and warms it up, says it is ready, then denoises the
chunks it is sent until told to stop. It runs no host stage: it gets a chunk's aligned
faces and audio features and returns the generated faces, as the job's own device would
hand them to paste-back. Messages on its pipe:

    from the job process                    from the worker
    ("job", sampling)   a new job: a fresh  ("ready",) / ("unusable", text)   loaded, or not
                        denoiser (generator ("faces", index, array)            a chunk's result
                        and initial noise)  ("failed", index, text)           a FastsyncError
    ("chunk", index, skipped, faces, audio) ("crashed", index, text)          anything else; the
    ("stop",)                                                                 worker exits

`skipped` lists the frame counts of the chunks denoised elsewhere since this worker's last
one: the worker's generator consumes their random numbers first (ChunkDenoiser.skip), so
every chunk draws the same noise as in a job on one device.
"""

from __future__ import annotations

import sys
import traceback

import torch

from fastsync.batch_worker import describe, load_engine, load_ready, worker_signals
from fastsync.errors import FastsyncError


def worker_main(options, sampling, threads: int | None, conn) -> None:
    """Entry point of the worker process; `sampling` is the first job's, for the warm-up."""
    worker_signals()
    try:
        engine = load_ready(options, _warmed(sampling), threads, conn)
        if engine is not None:
            _serve(engine, conn)
    except (KeyboardInterrupt, BrokenPipeError, EOFError):
        pass  # stopped by the job process, or it is gone: nobody to tell
    finally:
        conn.close()


def _warmed(sampling):
    def factory(options):
        engine = load_engine(options)
        engine.warm_up(sampling)  # compiled blocks from the disk store the job process filled
        return engine
    return factory


def _serve(engine, conn) -> None:
    from fastsync.memory import device_memory_errors
    from fastsync.pipeline import make_denoiser
    from fastsync.transfer import Download

    c = engine.components
    denoiser = None
    while (message := conn.recv())[0] != "stop":
        if message[0] == "job":
            denoiser = make_denoiser(c, message[1])
            continue
        _, index, skipped, faces, audio = message
        try:
            with device_memory_errors(c.device, c.options.mode, f"denoising chunk {index}"):
                for frames in skipped:
                    denoiser.skip(frames)
                result = Download(denoiser(torch.from_numpy(faces), torch.from_numpy(audio))).numpy()
        except FastsyncError as exc:
            conn.send(("failed", index, str(exc)))
            continue
        except Exception as exc:
            traceback.print_exception(exc, file=sys.stderr)
            conn.send(("crashed", index, describe(exc)))
            return
        conn.send(("faces", index, result))
