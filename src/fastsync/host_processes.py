"""Fast mode's host stages in worker processes, so that they never wait for the GIL.

In the threaded pipeline the decode+warp and paste+encode threads take about 20 s each of
the 25 s demo1 job on an H100, against 11 s for the same two threads without the GPU
thread beside them (bench/results/README.md, "The host side on its own"): all three share
one interpreter lock. Here each host pipeline is a process of its own:

    prepare process:  decode (ping-pong) -> landmarks -> align      --chunks-->  job process
    job process:      audio features, VAE + DDIM + VAE on the GPU   --faces--->  finish process
    finish process:   decode its own copy -> paste back -> H.264 + AAC, written atomically

Only the aligned faces (16 x 512 x 512 x 3 bytes a chunk), the generated faces (float16,
as the decoder made them, so nothing is lost on the way) and the affine matrices cross
between processes; the finishing process decodes the video itself rather than receive
6 MB a frame. Both processes run the same functions as the threads (fastsync.chunks),
so the output is the same, bit for bit (tests/test_host_processes.py).

The processes come from a fork server started once per engine (`warm_up`), which has
imported the host-side modules, so a job's two processes start in milliseconds, fork
from a process that never touched CUDA, and need no re-import. Unlike other
multiprocessing children they do not run the program's main script (fastsync.spawning):
a script calling fastsync needs no `if __name__ == "__main__":` guard for them. A failure
in either process reaches the job as a `HostWorkerError` naming the stage, with the worker's
traceback; a failed or interrupted job tells the finishing process to abort, and it
removes its temporary file, so no half-written output is left.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastsync import errors, stages
from fastsync.chunks import Chunk
from fastsync.errors import FastsyncError
from fastsync.output import OutputOptions
from fastsync.spawning import start_without_main_script

QUEUE_DEPTH = 2  # chunks in flight per queue: back-pressure, so memory does not grow with the video
POLL_S = 0.5  # how often a blocked side checks that the other is still alive
ABORT_WAIT_S = 30.0  # how long the job waits for the finishing process to remove its file
WORKER_NICE = 5  # added to the workers' niceness (the job process keeps its own)


class HostWorkerError(FastsyncError):
    """A host worker process failed; the message carries its stage and traceback."""


@dataclass(frozen=True)
class PrepareSpec:
    video: Path
    frames: int  # output frames of the job
    step: int  # frames per chunk
    resolution: int
    face_backend: str
    checkpoint_dir: Path
    device: str  # where a face detector may run (the landmarker's choice)
    landmarks_cache: Path | None
    face_workers: int  # detection threads inside the process
    profile_dir: Path | None = None  # write a CPU trace of this process here (fastsync profile)
    face_near: tuple[float, float] | None = None  # the face nearest this point, not the largest


@dataclass(frozen=True)
class FinishSpec:
    video: Path
    frames: int
    output: Path
    width: int
    height: int
    audio: Path  # reloaded here rather than sent: the same samples, cut to the job's frames
    preset: str
    x264_threads: int
    face_workers: int  # paste-back threads inside the process
    profile_dir: Path | None = None
    encoding: OutputOptions = OutputOptions()  # EngineOptions.output: the audio track and the crf


def _context():
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


def warm_up() -> None:
    """Start the fork server now (it imports the host modules once), not at the first job."""
    ctx = _context()
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["fastsync.host_processes", "fastsync.chunks", "fastsync.face.restore",
                                    "fastsync.face.align", "fastsync.media.video", "fastsync.media.writer"])
        from multiprocessing import forkserver

        forkserver.ensure_running()


# -- inside the worker processes -------------------------------------------------------------
def _worker_start() -> None:
    """Signals as below, and a lower CPU priority: the job's thread that feeds the GPU is
    the critical path, the workers' decode, paste-back and libx264's threads (1.5 per core)
    are throughput work. A job's short last chunk runs eagerly, bound by that thread's
    launches, while the finishing process encodes the chunk before it on every core."""
    os.nice(WORKER_NICE)  # threads started from here on (libx264's, the paste-back pool) inherit it
    _worker_signals()


def _worker_signals() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the job process alone decides
    # what to do and tells the workers. SIGTERM (from `terminate`) unwinds like an error,
    # so the finishing process's writer still removes its temporary file.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit("terminated")


def _report_failure(box, stage: str, exc: BaseException, parent: int) -> None:
    """Tell the job why this worker stops. The message must be flushed whole before the
    process exits (a half-written one would block the reader), so the process waits for
    room in the queue for as long as the job is alive, and gives up only when it is gone."""
    try:
        _put(box, _failure(stage, exc), parent)
    except SystemExit:  # the job process is gone, or stopped us: nobody will read it
        box.cancel_join_thread()


def _put(box, item, parent: int) -> None:
    while True:
        try:
            box.put(item, timeout=POLL_S)
            return
        except queue.Full:
            _check_parent(parent)


def _get(box, parent: int):
    while True:
        try:
            return box.get(timeout=POLL_S)
        except queue.Empty:
            _check_parent(parent)


def _check_parent(parent: int) -> None:
    try:
        os.kill(parent, 0)
    except OSError:
        raise SystemExit("the job process is gone") from None


class _Profile:
    """torch.profiler over a worker's whole job when asked for: `fastsync profile` traces the
    job process, whose ops then leave out the host stages. `stop` writes this process's
    trace beside the job's (TensorBoard reads every `*.pt.trace.json` there) and returns its
    top CPU ops for the report; None when not profiling."""

    def __init__(self, directory: Path | None, name: str):
        self.directory, self.name, self.prof = directory, name, None
        if directory is not None:
            from fastsync.tools.profiler import _all_threads_config

            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                               experimental_config=_all_threads_config())
            self.prof.__enter__()

    def stop(self) -> list[dict] | None:
        if self.prof is None:
            return None
        from fastsync.tools.report import _top_ops

        self.prof.__exit__(None, None, None)
        Path(self.directory).mkdir(parents=True, exist_ok=True)
        self.prof.export_chrome_trace(str(Path(self.directory) / f"{self.name}.pt.trace.json"))
        return _top_ops(self.prof, by_device=False)[0]


def _failure(stage: str, exc: BaseException) -> tuple:
    text = "".join(traceback.format_exception(exc))
    return ("error", stage, type(exc).__name__, str(exc), text)


def _prepare_main(spec: PrepareSpec, outbox, parent: int) -> None:
    _worker_start()
    from concurrent.futures import ThreadPoolExecutor

    from fastsync.chunks import FaceTracker, iter_chunks
    from fastsync.engine import LazyLandmarker
    from fastsync.face.cache import LandmarkCache
    from fastsync.face.choice import cache_backend

    try:
        profile = _Profile(spec.profile_dir, "prepare")
        clock = stages.StageClock()
        landmarker = LazyLandmarker(spec.face_backend, spec.checkpoint_dir, torch.device(spec.device))
        cache = LandmarkCache(spec.landmarks_cache, spec.video, cache_backend(landmarker.name, spec.face_near))
        workers = ThreadPoolExecutor(spec.face_workers) if spec.face_workers > 1 else None
        tracker = FaceTracker(landmarker, spec.resolution, workers, cache, near=spec.face_near)
        for chunk in iter_chunks(spec.video, spec.frames, spec.step, tracker, clock, keep_frames=False):
            faces = None if chunk.faces is None else chunk.faces.numpy()
            _put(outbox, ("chunk", chunk.index, chunk.start, chunk.count, faces, chunk.affines), parent)
        cache.save()
        if workers is not None:
            workers.shutdown()
        ops = profile.stop()
        _put(outbox, ("end", tracker.without_face, tracker.several_faces, dict(clock.seconds), ops), parent)
    except SystemExit:  # stopped by the job (or orphaned): nobody waits for a report
        outbox.cancel_join_thread()
    except BaseException as exc:  # noqa: B036 - every other failure must reach the job
        _report_failure(outbox, "prepare", exc, parent)


def _finish_main(spec: FinishSpec, inbox, outbox, parent: int) -> None:
    _worker_start()
    from concurrent.futures import ThreadPoolExecutor

    from fastsync.chunks import paste_chunk
    from fastsync.media.audio_track import job_audio_track
    from fastsync.media.video import FrameSource
    from fastsync.media.writer import VideoWriter
    from fastsync.pipeline import AUDIO_SAMPLE_RATE, VIDEO_FPS, load_job_audio

    try:
        profile = _Profile(spec.profile_dir, "finish")
        clock = stages.StageClock()
        samples = load_job_audio(spec.audio) if spec.encoding.audio == "reference" else None
        track = job_audio_track(spec.encoding.audio, spec.audio, samples, AUDIO_SAMPLE_RATE)
        workers = ThreadPoolExecutor(spec.face_workers) if spec.face_workers > 1 else None
        frames = iter(FrameSource(spec.video, spec.frames))
        with VideoWriter(spec.output, spec.width, spec.height, fps=VIDEO_FPS, audio=track, crf=spec.encoding.crf,
                         preset=spec.preset, threads=spec.x264_threads) as writer:
            while (message := _get(inbox, parent))[0] == "chunk":
                _, count, faces, affines = message
                with clock.stage(stages.RESTORE):  # this process's own decode is counted here
                    originals = [next(frames)[1] for _ in range(count)]
                    pasted = paste_chunk(originals, faces, affines, workers)
                with clock.stage(stages.WRITE):
                    for frame in pasted:
                        writer.write(frame)
                _put(outbox, ("written", count), parent)
            if message[0] != "close":
                raise SystemExit("aborted by the job")  # leaves the writer by an exception: no file
            with clock.stage(stages.WRITE):
                writer.close()
        if workers is not None:
            workers.shutdown()
        outbox.put(("done", dict(clock.seconds), profile.stop()))
    except SystemExit:
        outbox.cancel_join_thread()
    except BaseException as exc:  # noqa: B036
        _report_failure(outbox, "finish", exc, parent)


# -- in the job process ----------------------------------------------------------------------
class HostProcesses:
    """One job's prepare and finish processes. Use as a context manager around the job:
    leaving it by an exception aborts the finishing process (no output is written)."""

    def __init__(self, prepare: PrepareSpec, finish: FinishSpec, clock: stages.StageClock, on_written=None):
        ctx = _context()
        self.clock = clock
        self.on_written = on_written or (lambda n: None)
        self._chunks = ctx.Queue(QUEUE_DEPTH)
        self._to_finish = ctx.Queue(QUEUE_DEPTH)
        self._from_finish = ctx.Queue()
        parent = os.getpid()
        self._prepare = ctx.Process(target=_prepare_main, args=(prepare, self._chunks, parent),
                                    name="fastsync-prepare", daemon=True)
        self._finish = ctx.Process(target=_finish_main, args=(finish, self._to_finish, self._from_finish, parent),
                                   name="fastsync-finish", daemon=True)
        self.without_face = self.several_faces = 0
        self.top_ops: dict[str, list[dict]] = {}  # each worker's, when its spec asks for a profile
        self._done = False

    def __enter__(self) -> HostProcesses:
        start_without_main_script(self._prepare)  # both run fastsync's functions on its specs only
        start_without_main_script(self._finish)
        return self

    def chunks(self) -> Iterator[Chunk]:
        """Prepared chunks in order, until the prepare process has sent its last."""
        while True:
            message = self._receive(self._chunks, self._prepare)
            if message[0] == "end":
                _, self.without_face, self.several_faces, seconds, ops = message
                self.clock.add(seconds)
                if ops is not None:
                    self.top_ops["prepare"] = ops
                return
            _, index, start, count, faces, affines = message
            yield Chunk(index, start, count, None if faces is None else torch.from_numpy(faces), affines, [])
            self._drain_progress()

    def finish(self, chunk: Chunk, faces: np.ndarray | None) -> None:
        """Hand a denoised chunk to the finishing process (blocks while it is two behind)."""
        while True:
            try:
                self._to_finish.put(("chunk", chunk.count, faces, chunk.affines), timeout=POLL_S)
                break
            except queue.Full:
                self._drain_progress()
                self._check_alive(self._finish, self._from_finish)
        self._drain_progress()

    def close(self) -> None:
        """Let the finishing process flush and move its file into place; wait for it."""
        self._to_finish.put(("close",))
        while (message := self._receive(self._from_finish, self._finish))[0] != "done":
            self._handle_progress(message)
        self.clock.add(message[1])
        if message[2] is not None:
            self.top_ops["finish"] = message[2]
        self._done = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self._abort()
        for process in (self._prepare, self._finish):
            process.join(timeout=ABORT_WAIT_S)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()

    # -- helpers -----------------------------------------------------------------------------
    def _abort(self) -> None:
        self._to_finish.cancel_join_thread()  # never hang this process on a worker that is gone
        if self._prepare.is_alive():
            self._prepare.terminate()  # it holds nothing worth keeping; its landmark cache is atomic
        if self._finish.is_alive():
            try:
                self._to_finish.put(("abort",), timeout=ABORT_WAIT_S)
            except queue.Full:
                self._finish.terminate()  # SIGTERM unwinds its writer: the temporary file goes

    def _receive(self, box, process):
        while True:
            try:
                message = box.get(timeout=POLL_S)
            except queue.Empty:
                self._check_alive(process, box)
                continue
            if message[0] == "error":
                raise _worker_error(message)
            return message

    def _check_alive(self, process, box) -> None:
        if not process.is_alive() and box.empty():
            raise HostWorkerError(
                f"the {process.name} process died (exit code {process.exitcode}) without reporting an error: "
                "killed (by the out-of-memory killer, or a signal) or crashed in native code. To run the host "
                "stages in this process instead: --host-threads, FastOptions(host_processes=False)")

    def _drain_progress(self) -> None:
        while True:
            try:
                message = self._from_finish.get_nowait()
            except queue.Empty:
                return
            self._handle_progress(message)

    def _handle_progress(self, message) -> None:
        if message[0] == "error":
            raise _worker_error(message)
        if message[0] == "written":
            self.on_written(message[1])


def _worker_error(message: tuple) -> FastsyncError:
    """A worker's failure as the job's exception: a bad input keeps its own class and
    message (it names the file and the fix); anything else carries the worker's traceback."""
    _, stage, kind, text, trace = message
    known = getattr(errors, kind, None)
    if isinstance(known, type) and issubclass(known, FastsyncError):
        return known(text)
    return HostWorkerError(f"the {stage} worker failed: {kind}: {text}\n{trace}")
