"""One job over several devices: `fastsync run --devices cuda:0,cuda:1`.

A job's chunks are independent once their faces are aligned: each is denoised from the
same initial noise, and only the VAE's posterior noise runs on from chunk to chunk. So the
job process keeps everything else (decode, alignment, audio features, paste-back, one
encoder) and hands chunks round-robin to its own device and to one worker process per
further device (fastsync.job_worker):

    job process:   prepare ──► chunk 0, 2, 4 ... on cuda:0 ──┐
                           └─► chunk 1, 3, 5 ... ──► worker cuda:1 ──┴──► paste back, encode in order

Each participant skips the random numbers of the chunks the others denoise
(ChunkDenoiser.skip), so each chunk draws the one-device job's noise: on CPUs the file is
the same bit for bit (tests/test_job_devices.py); on GPUs a worker matches the job process
within fp16 rounding, as any second process does (bench/results/README.md, nineteenth
session). The encoder and paste-back stay one
pipeline, so they bound the speed-up: on the benchmarks' 16-core H100 host, paste-back and
libx264 "medium" finish 1080x1920 at about 37 frames a second, against about 15 for one
H100's denoising (bench/results/e2e_h100_session19.json).

Workers are spawned (never forked from a process that touched CUDA), do not run the
program's main script (fastsync.spawning), and are daemonic: they die with the job
process. They load their engines after the job process has warmed up, so they read the
compiled blocks from its disk store instead of compiling them again.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from fastsync.devices import cpu_share, device_labels
from fastsync.engine import pick_device
from fastsync.errors import FastsyncError
from fastsync.spawning import start_without_main_script
from fastsync.transfer import Download

READY_WAIT_S = 1800.0  # loading, and compiling when the disk store lacks a block, on a slow host


class DeviceWorkerError(FastsyncError):
    """A device worker could not load, failed a chunk, or died."""


@dataclass
class _Worker:
    label: str
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    sender: ThreadPoolExecutor  # sends in order without blocking the job's thread
    results: dict[int, Future] = field(default_factory=dict)  # chunk index -> its faces
    lock: threading.Lock = field(default_factory=threading.Lock)
    gone: str | None = None  # why it takes no more chunks


class RemoteFaces:
    """A chunk's generated faces on their way from a worker; `.numpy()` waits for them, as
    `fastsync.transfer.Download` does for the job's own device."""

    def __init__(self, future: Future, upcast: bool):
        self._future, self._upcast = future, upcast

    def numpy(self) -> np.ndarray:
        faces = self._future.result()
        return faces.astype(np.float32) if self._upcast else faces  # fp16 -> fp32 is exact


class ChunkDevices:
    """The worker processes of the further devices, for the engine's lifetime."""

    def __init__(self, options, devices: list[str], sampling):
        """`options`: the engine's EngineOptions; each worker gets them with its device.
        Returns once every worker is ready; raises DeviceWorkerError (none left running)
        if one cannot load."""
        ctx = multiprocessing.get_context("spawn")
        own = pick_device(options.device)
        if own.type == "cuda" and own.index is None:  # a bare "cuda" is the current GPU: name it
            own = torch.device("cuda", torch.cuda.current_device())
        own = str(own)
        threads = cpu_share([own, *devices]) if "cpu" in devices else None  # the job process's CPU counts too
        self.own_label, *labels = device_labels([own, *devices])  # "cpu#0" beside "cpu#1"
        self.workers: list[_Worker] = []
        try:
            for label, device in zip(labels, devices):
                self.workers.append(self._start(ctx, options, label, device, sampling, threads))
            for w in self.workers:
                self._wait_ready(w)
        except BaseException:
            self.close()
            raise
        for w in self.workers:
            threading.Thread(target=self._receive, args=(w,), name=f"fastsync-receive-{w.label}",
                             daemon=True).start()

    @property
    def labels(self) -> list[str]:
        return [w.label for w in self.workers]

    @staticmethod
    def _start(ctx, options, label: str, device: str, sampling, threads) -> _Worker:
        from fastsync.job_worker import worker_main

        # No compile workers: a daemonic process may start none (the job process's warm-up
        # has put the compiled blocks on disk for it), and no host stages run there.
        fast = dataclasses.replace(options.fast, compile_workers=0)
        worker_options = dataclasses.replace(options, device=device, chunk_devices=(), fast=fast)
        mine, theirs = ctx.Pipe()
        process = ctx.Process(target=worker_main, args=(worker_options, sampling, threads, theirs),
                              name=f"fastsync-device-{label}", daemon=True)
        start_without_main_script(process)
        theirs.close()  # when the worker dies, our end reads end-of-file
        return _Worker(label, process, mine, ThreadPoolExecutor(1, thread_name_prefix=f"fastsync-send-{label}"))

    @staticmethod
    def _wait_ready(w: _Worker) -> None:
        if not w.conn.poll(READY_WAIT_S):
            raise DeviceWorkerError(f"the worker on {w.label} was not ready after {READY_WAIT_S:.0f} s")
        try:
            message = w.conn.recv()
        except EOFError:
            raise DeviceWorkerError(f"the worker on {w.label} died while loading ({_exit_status(w.process)})") from None
        if message[0] != "ready":
            raise DeviceWorkerError(f"the worker on {w.label} could not load its engine: {message[1]}")

    # -- per job ---------------------------------------------------------------------------
    def begin_job(self, sampling) -> None:
        """Every worker builds the new job's denoiser (its own generator and initial noise)."""
        for w in self.workers:
            self._check(w)
            w.sender.submit(self._send, w, ("job", sampling))

    def submit(self, worker: int, index: int, skipped: list[int], faces: np.ndarray, audio: Download,
               upcast: bool) -> RemoteFaces:
        """Queue chunk `index` on worker `worker` (0 = the first further device). `audio`:
        the chunk's features on their way to host memory; the sending thread waits for them,
        not the job's thread."""
        w = self.workers[worker]
        self._check(w)
        future: Future = Future()
        with w.lock:
            w.results[index] = future
        w.sender.submit(self._send_chunk, w, future, ("chunk", index, list(skipped), faces), audio)
        return RemoteFaces(future, upcast)

    # -- plumbing --------------------------------------------------------------------------
    @staticmethod
    def _check(w: _Worker) -> None:
        if w.gone is not None:
            raise DeviceWorkerError(w.gone)

    def _send(self, w: _Worker, message: tuple) -> None:
        try:
            w.conn.send(message)
        except (BrokenPipeError, OSError):
            pass  # the receiving thread reads end-of-file and fails the chunks

    def _send_chunk(self, w: _Worker, future: Future, head: tuple, audio: Download) -> None:
        try:
            w.conn.send((*head, audio.numpy()))
        except (BrokenPipeError, OSError):
            pass  # as in _send
        except BaseException as exc:  # noqa: B036 - a chunk that cannot be sent fails, never hangs the job
            if not future.done():
                future.set_exception(exc)

    def _receive(self, w: _Worker) -> None:
        while True:
            try:
                message = w.conn.recv()
            except (EOFError, OSError):
                self._fail_all(w, f"the worker on {w.label} died ({_exit_status(w.process)}): killed (by the "
                                  "out-of-memory killer, or a signal) or crashed in native code")
                return
            kind, index, payload = message
            with w.lock:
                future = w.results.pop(index, None)
            if future is None:
                continue
            if kind == "faces":
                future.set_result(payload)
                continue
            future.set_exception(DeviceWorkerError(f"{w.label}, chunk {index}: {payload}"))
            if kind == "crashed":  # the worker exits; a CUDA error may be sticky
                self._fail_all(w, f"the worker on {w.label} stopped after an error: {payload}")
                return

    def _fail_all(self, w: _Worker, why: str) -> None:
        w.gone = why
        with w.lock:
            pending, w.results = w.results, {}
        for future in pending.values():
            future.set_exception(DeviceWorkerError(why))

    def close(self) -> None:
        """Stop every worker (idle ones finish cleanly; any other is terminated)."""
        for w in self.workers:
            w.sender.shutdown(wait=True, cancel_futures=True)
            if w.process.is_alive():
                self._send(w, ("stop",))
        for w in self.workers:
            w.process.join(10)
            if w.process.is_alive():
                w.process.terminate()
                w.process.join(5)
            w.conn.close()
        self.workers = []


def _exit_status(process, wait_s: float = 5.0) -> str:
    """"exit code N" once the process has ended. Another thread may be joining it too:
    then this one's join can return before the exit code is set, so it is polled for."""
    deadline = time.monotonic() + wait_s
    process.join(wait_s)
    while process.exitcode is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return "exit code unknown" if process.exitcode is None else f"exit code {process.exitcode}"


class ChunkRouter:
    """One job's round-robin over its denoising devices (`labels[0]` is the job's own, then
    the workers'): who denoises each chunk with faces, and the frame counts it must skip first."""

    def __init__(self, labels: list[str]):
        self.labels = labels
        self._turn = 0
        self._skipped: list[list[int]] = [[] for _ in labels]
        self._done = [0] * len(labels)

    @property
    def participants(self) -> int:
        return len(self.labels)

    def take(self, frames: int) -> tuple[int, list[int]]:
        who = self._turn
        self._turn = (self._turn + 1) % self.participants
        skipped, self._skipped[who] = self._skipped[who], []
        for other in range(self.participants):
            if other != who:
                self._skipped[other].append(frames)
        self._done[who] += 1
        return who, skipped

    def counts(self) -> dict[str, int] | None:
        """Chunks per device, or None for a job on one device."""
        return dict(zip(self.labels, self._done)) if self.participants > 1 else None
