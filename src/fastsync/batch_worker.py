"""One device's worker process in a multi-device batch (fastsync.batch_devices).

The worker loads its engine once, says it is ready, then runs one job per message from
the batch process until told to stop. Messages to the batch process, on its own pipe:

    ("ready",)                    the engine is loaded; send jobs
    ("unusable", text)            the engine could not be loaded; the worker exits
    ("done", number, summary, record)  the job's output is in place; record: batch_report.job_record
    ("failed", number, text)      the job failed with a FastsyncError; the worker goes on
    ("crashed", number, text)     any other error; the worker exits, since its device
                                  may be left in a bad state (a CUDA error is sticky)
"""

from __future__ import annotations

import signal
import sys
import traceback

from fastsync.batch import engine_encoding
from fastsync.batch_report import job_record
from fastsync.errors import FastsyncError


def load_engine(options):
    """The default engine factory: the same engine as the single-device batch."""
    from fastsync.api import LipSync

    return LipSync.from_options(options)


def worker_main(options, factory, sampling, threads: int | None, conn) -> None:
    """Entry point of the worker process. `threads`: torch's intra-op threads (CPU workers
    share the cores), or None to keep the library default."""
    worker_signals()
    try:
        engine = load_ready(options, factory, threads, conn)
        if engine is not None:
            _serve(engine, sampling, conn)
    except (KeyboardInterrupt, BrokenPipeError, EOFError):
        pass  # stopped by the batch process, or the batch process is gone: nobody to tell
    finally:
        conn.close()


def worker_signals() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the batch process alone
    # decides, and stops the workers with SIGTERM. SIGTERM unwinds the job like Ctrl-C, so
    # the engine's writer removes its temporary file and its host workers are aborted.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def load_ready(options, factory, threads, conn):
    """The worker's engine on its device, then ("ready",) on `conn`; ("unusable", text) and None
    when it cannot be loaded."""
    try:
        use_device(options.device, threads)
        engine = factory(options)
    except FastsyncError as exc:
        conn.send(("unusable", str(exc)))
        return None
    except Exception as exc:
        conn.send(("unusable", describe(exc)))
        return None
    conn.send(("ready",))
    return engine


def use_device(device: str, threads: int | None) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    from fastsync.devices import make_current

    make_current(device)  # each worker's streams and graphs on its own GPU, not all on GPU 0


def _serve(engine, sampling, conn) -> None:
    encoding = engine_encoding(engine)  # a job's own output values go on top of the engine's
    while (message := conn.recv())[0] == "job":
        _, number, job = message
        try:
            report = engine.run(job.video, job.audio, job.output, sampling=job.sampling(sampling),
                                landmarks_cache=job.landmarks, face_near=job.face_near,
                                encoding=job.encoding(encoding))
        except FastsyncError as exc:
            conn.send(("failed", number, str(exc)))
            continue
        except Exception as exc:
            traceback.print_exception(exc, file=sys.stderr)  # the whole story, for whoever reads the log
            conn.send(("crashed", number, describe(exc)))
            return
        conn.send(("done", number, report.summary(), job_record(report)))


def describe(exc: BaseException) -> str:
    """An unexpected error with the place it came from: the batch process prints it."""
    where = traceback.extract_tb(exc.__traceback__)[-1:] or [None]
    place = "" if where[0] is None else f" (at {where[0].filename}:{where[0].lineno})"
    return f"{type(exc).__name__}: {exc}{place}"
