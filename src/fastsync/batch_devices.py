"""`fastsync batch JOBS --devices cuda:0,cuda:1`: one batch over several devices of a host.

    batch process:  the pending jobs, handed out one at a time to whichever worker is idle
    worker cuda:0:  its own engine, loaded once  <-- job / result -->  batch process
    worker cuda:1:  its own engine, loaded once  <-- job / result -->  batch process

A worker takes its next job only when it has finished the last, so a long job on one
GPU never holds back the others (no static split). Each worker is a *spawned* process:
a fresh interpreter that has never touched CUDA (a forked one would inherit the parent's
CUDA state). Workers are not daemonic, because each engine may start its own host
worker processes (FastOptions.host_processes), and a daemonic process may have none;
so the batch process stops them itself on every way out.

Each worker talks over a pipe of its own, and the batch process keeps which job each one
holds. A worker that dies (a crash, the OOM killer) cannot leave a shared lock held or a
half-written message for the others, and its job is reported failed, by device, while
the rest go to the workers left. If none is left, the remaining jobs are reported failed.
Skips, failures and the summary line are those of fastsync.batch.run_batch.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import TYPE_CHECKING

from fastsync.batch import BatchJob, run_batch
from fastsync.batch_report import BatchReport
from fastsync.batch_worker import load_engine, worker_main
from fastsync.devices import cpu_share, device_labels, parse_devices
from fastsync.spawning import start_without_main_script

if TYPE_CHECKING:
    from fastsync.denoise import SamplingOptions
    from fastsync.engine import EngineOptions

STOP_WAIT_S = 60.0  # a stopped worker first aborts its job's host workers (up to 30 s: host_processes)
LOST_WAIT_S = 10.0  # a worker whose pipe closed is exiting; after this it is killed


def run_batch_on_devices(options: EngineOptions, jobs: list[BatchJob], devices: str | list[str], *,
                         sampling: SamplingOptions | None = None, overwrite: bool = False, echo=print,
                         engine_factory=None, report: BatchReport | None = None) -> tuple[int, int, int]:
    """Run `jobs` with one engine per device (`options` with each device in turn); returns
    (done, skipped, failed). `devices`: as for --devices ("cuda:0,cuda:1", "all",
    ["cpu", "cpu"]). One device runs in this process, as run_batch does. `engine_factory`
    (options -> engine with .run) must be a module-level function: the workers import it.
    The workers do not run the program's main script (fastsync.spawning), unless the factory
    is defined there: then, as in any multiprocessing program, the script must keep its
    work under `if __name__ == "__main__":`, since each worker imports it. `report`
    (fastsync.batch_report) gets each job's outcome and the device that ran it."""
    devices = parse_devices(devices)
    factory = engine_factory or load_engine
    if len(devices) == 1:
        engine = factory(dataclasses.replace(options, device=devices[0]))
        return run_batch(engine, jobs, sampling=sampling, overwrite=overwrite, echo=echo, report=report)
    batch = _DeviceBatch(jobs, overwrite, echo, report or BatchReport(jobs))
    workers: list[_Worker] = []
    finished = False
    try:
        if batch.pending:
            devices = devices[:len(batch.pending)]  # an engine per job at most: loading one costs
            _start_workers(options, devices, factory, sampling, workers)
            echo(f"batch: {len(batch.pending)} job(s) on {', '.join(w.label for w in workers)}")
            batch.run(workers)
        finished = True
    finally:
        _stop(workers, graceful=finished)
    return batch.finish()


@dataclass
class _Worker:
    label: str  # the device, with "#k" when a CPU is listed several times
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    ready: bool = False  # its engine is loaded
    job: tuple[int, BatchJob] | None = None  # (number, job) in flight
    out: bool = False  # dead or retired: it takes no more jobs


def _start_workers(options, devices: list[str], factory, sampling, workers: list[_Worker]) -> None:
    ctx = multiprocessing.get_context("spawn")
    threads = cpu_share(devices)
    for label, device in zip(device_labels(devices), devices):
        mine, theirs = ctx.Pipe()
        args = (dataclasses.replace(options, device=device), factory, sampling,
                threads if device == "cpu" else None, theirs)
        process = ctx.Process(target=worker_main, args=args, name=f"fastsync-batch-{label}", daemon=False)
        if getattr(factory, "__module__", "__main__") == "__main__":
            process.start()  # the worker imports the factory from the program's main script
        else:
            start_without_main_script(process)
        theirs.close()  # only the worker holds its end now: when it dies, ours reads end-of-file
        workers.append(_Worker(label, process, mine))


def _stop(workers: list[_Worker], graceful: bool) -> None:
    """Idle workers finish cleanly; any other (loading, or mid-job on Ctrl-C / SIGTERM) gets
    SIGTERM, which unwinds its job: the engine's writer removes its temporary file."""
    for w in workers:
        if not w.process.is_alive():
            continue
        if graceful and w.ready and w.job is None and _send(w.conn, ("stop",)):
            continue
        w.process.terminate()
    for w in workers:
        w.process.join(STOP_WAIT_S)
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
        w.conn.close()


class _DeviceBatch:
    """The batch process's side: which jobs wait, which worker holds which; the tally is the report's."""

    def __init__(self, jobs: list[BatchJob], overwrite: bool, echo, report: BatchReport):
        self.total, self.overwrite, self.echo, self.report = len(jobs), overwrite, echo, report
        self.workers: list[_Worker] = []
        self.pending = deque(item for item in enumerate(jobs, start=1) if not self._skip(*item))

    def run(self, workers: list[_Worker]) -> None:
        self.workers = workers
        while self.pending or any(w.job for w in workers):
            self._dispatch()
            live = [w for w in workers if not w.out]
            if not live:
                break
            ready = wait([w.conn for w in live] + [w.process.sentinel for w in live])
            for w in live:
                if w.conn in ready or w.process.sentinel in ready:
                    self._service(w)
        while self.pending:
            number, _ = self.pending.popleft()
            self._fail(number, None, "not run: no device's worker is left (see above)")

    def finish(self) -> tuple[int, int, int]:
        return self.report.finish(self.echo)

    # -- handing out jobs ----------------------------------------------------------------------
    def _skip(self, number: int, job: BatchJob) -> bool:
        if self.overwrite or not job.output.exists():
            return False
        self.echo(f"[{number}/{self.total}] skip: {job.output} exists (use --overwrite)")
        self.report.skipped(number)
        return True

    def _dispatch(self) -> None:
        for w in self.workers:
            if not w.ready or w.out or w.job is not None:
                continue
            w.job = self._next_job()
            if w.job is None:
                return
            if not _send(w.conn, ("job", *w.job)):  # it died while idle: the job was never run
                self.pending.appendleft(w.job)
                w.job = None
                self._lost(w)

    def _next_job(self) -> tuple[int, BatchJob] | None:
        """The first waiting job whose output no worker is writing. Two jobs with one output
        then run one after the other, as in run_batch: the second is skipped when the first
        made the file (checked again here), or overwrites it with --overwrite."""
        writing = {w.job[1].output for w in self.workers if w.job}
        for item in list(self.pending):
            if item[1].output in writing:
                continue
            self.pending.remove(item)
            if not self._skip(*item):
                return item
        return None

    # -- hearing back --------------------------------------------------------------------------
    def _service(self, w: _Worker) -> None:
        try:
            while not w.out and w.conn.poll():
                self._handle(w, w.conn.recv())
        except (EOFError, OSError):
            self._lost(w)
            return
        if not w.out and not w.process.is_alive():
            self._lost(w)

    def _handle(self, w: _Worker, message: tuple) -> None:
        kind = message[0]
        if kind == "ready":
            w.ready = True
        elif kind == "unusable":
            self.echo(f"batch: {w.label} could not load the engine and runs no jobs: {message[1]}")
            w.out = True
        elif kind == "done":
            w.job = None
            self.echo(f"[{message[1]}/{self.total}] {w.label}: {message[2]}")
            self.report.done(message[1], message[3], w.label)
        elif kind == "failed":
            w.job = None
            self._fail(message[1], w.label, message[2])
        elif kind == "crashed":
            w.job, w.out = None, True
            self._fail(message[1], w.label, f"{message[2]}\n  the worker on {w.label} stopped; the others go on")

    def _lost(self, w: _Worker) -> None:
        """The worker's pipe closed or its process ended: it is dead, or about to be."""
        w.out = True
        w.process.join(LOST_WAIT_S)
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
        how = _exit_status(w.process.exitcode)
        if w.job is not None:
            number, _ = w.job
            w.job = None
            self._fail(number, w.label, f"the worker on {w.label} died ({how}) while running this job; "
                                        "the other devices take the remaining jobs")
        elif not w.ready:
            self.echo(f"batch: the worker on {w.label} died ({how}) while loading the engine. If the "
                      "engine factory is defined in the program's main script, the worker imports that "
                      "script: it must keep its work under `if __name__ == \"__main__\":`")
        else:
            self.echo(f"batch: the worker on {w.label} died ({how}) between jobs")

    def _fail(self, number: int, label: str | None, text: str) -> None:
        where = f" {label}:" if label else ""
        self.echo(f"[{number}/{self.total}]{where} FAILED: {text}")
        self.report.failed(number, text, label)


def _send(conn, message: tuple) -> bool:
    try:
        conn.send(message)
        return True
    except OSError:  # the worker is gone
        return False


def _exit_status(code: int | None) -> str:
    if code is not None and code < 0:
        hint = ", as the kernel's out-of-memory killer does" if code == -9 else ""
        return f"killed by signal {-code}{hint}"
    return f"exit code {code}"
