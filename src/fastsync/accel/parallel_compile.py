"""Compile the regions a warm-up needs in worker processes at once, not one after another.

A first process on an H200 spent 112 s compiling 41 region functions, one after another
(bench/results/cold_start_h200_precompile.json). Tracing and lowering a region is Python
work, so one process compiles one region at a time however many cores it has. Here the
warm-up first runs with the RegionCompiler deferring (every region that would compile runs
eagerly and is listed), each listed call is compiled in one of a few worker processes as
soon as it is listed, and the main process loads the results as it would load the files of
a previous process.

The workers are plain `python -m fastsync.accel.parallel_compile` processes, not
multiprocessing ones: those import the program's main script again, which would run a
user's unguarded script in every worker.

A worker does not need the weights, only their layout: compiling depends on shapes,
strides, dtypes and the module's other attributes, never on tensor values. So the module
and its example inputs travel pickled with every tensor replaced by its layout, and the
worker rebuilds zero-filled tensors of that layout. Whatever a worker cannot do (a module
that does not pickle, a compile that fails, a worker that dies) is left to the main
process, which compiles it on its next call as before: this can cost time, never a result.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import pickle
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from fastsync.accel import precompile
from fastsync.components import set_diffusers_env

log = logging.getLogger(__name__)
_SKIPPED_ATTRIBUTES = ("forward", "_fastsync_region_key")  # the RegionCompiler's own additions


def default_workers() -> int:
    """Half the cores (each worker's inductor also compiles kernels in threads), at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def worker_count(setting: int) -> int:
    """FastOptions.compile_workers as a count: -1 means default_workers()."""
    return default_workers() if setting < 0 else setting


@dataclass(frozen=True)
class _Layout:
    ident: int  # one per tensor object: a tensor passed twice comes back as one (Dynamo guards aliasing)
    parameter: bool
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: str
    requires_grad: bool
    inference: bool


def _zeros(layout: _Layout) -> Tensor:
    return torch.empty_strided(layout.shape, layout.stride, dtype=layout.dtype, device=layout.device).zero_()


class _LayoutPickler(pickle.Pickler):
    """Pickles tensors as their layout, and region modules without the compiler's hooks."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.idents: dict[int, int] = {}
        self.kept: list[Tensor] = []  # alive until dumped, so no id() is reused meanwhile

    def persistent_id(self, obj):
        if isinstance(obj, Tensor):
            ident = self.idents.setdefault(id(obj), len(self.idents))
            self.kept.append(obj)
            return _Layout(ident, isinstance(obj, nn.Parameter), tuple(obj.shape), tuple(obj.stride()), obj.dtype,
                           str(obj.device), obj.requires_grad, obj.is_inference())
        return None

    def reducer_override(self, obj):
        if isinstance(obj, nn.Module) and any(name in obj.__dict__ for name in _SKIPPED_ATTRIBUTES):
            state = {k: v for k, v in obj.__dict__.items() if k not in _SKIPPED_ATTRIBUTES}
            return _bare_module, (type(obj),), state
        return NotImplemented


class _LayoutUnpickler(pickle.Unpickler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.built: dict[int, Tensor] = {}

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "diffusers":  # a VAE block: diffusers as the parent imports it, lean where it is
            from fastsync.components import import_diffusers

            import_diffusers()
        return super().find_class(module, name)

    def persistent_load(self, layout: _Layout) -> Tensor:
        if layout.ident not in self.built:
            self.built[layout.ident] = self._build(layout)
        return self.built[layout.ident]

    @staticmethod
    def _build(layout: _Layout) -> Tensor:
        if layout.inference:
            with torch.inference_mode():
                return _zeros(layout)
        t = _zeros(layout)
        if layout.parameter:
            return nn.Parameter(t, requires_grad=layout.requires_grad)
        return t.requires_grad_(layout.requires_grad)


def _bare_module(cls: type) -> nn.Module:
    return cls.__new__(cls)


def layout_payload(module: nn.Module, args: tuple, kwargs: dict) -> bytes:
    """What a worker needs to compile `type(module).forward(module, *args, **kwargs)`."""
    buffer = io.BytesIO()
    state = {"grad": torch.is_grad_enabled(), "inference": torch.is_inference_mode_enabled()}
    _LayoutPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump((module, args, kwargs, state))
    return buffer.getvalue()


def compile_payload(payload: bytes) -> tuple[bytes, float]:
    """In a worker: rebuild the call from its layout, compile it ahead, return it serialized."""
    started = time.perf_counter()
    module, args, kwargs, state = _LayoutUnpickler(io.BytesIO(payload)).load()
    for t in (*module.parameters(), *module.buffers(), *args):
        if isinstance(t, Tensor) and t.device.type == "cuda":
            torch.cuda.set_device(t.device)
            break
    # Dynamo guards on the grad and inference modes: compile under the caller's.
    with torch.inference_mode(state["inference"]), torch.set_grad_enabled(state["grad"]):
        fn = precompile.compile_ahead(type(module).forward, (module, *args), kwargs)
    return precompile.serialize(fn), time.perf_counter() - started


def _worker_main(kernel_threads: int) -> None:
    """A worker: compile each payload file named on stdin, answer on the original stdout."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the compilers print goes to stderr, not into the replies
    from fastsync.accel import short_attention
    from fastsync.accel.compile import configure_inductor

    configure_inductor()
    import torch._inductor.config as inductor

    inductor.compile_threads = kernel_threads
    if torch.cuda.is_available() and short_attention.available():
        short_attention.register()  # the motion modules' custom op, traced by name
    replies.write("ready\n")
    for line in sys.stdin:
        task = Path(line.strip())
        try:
            blob, seconds = compile_payload(task.read_bytes())
            partial = task.with_suffix(".partial")
            partial.write_bytes(blob)
            partial.replace(task.with_suffix(".out"))
            replies.write(f"ok {seconds:.3f}\n")
        except Exception as exc:  # noqa: BLE001 - reported; the main process compiles it instead
            message = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:2000]
            replies.write(f"error {message}\n")


def start_workers(count: int) -> list[subprocess.Popen]:
    """`count` workers, started now: each imports torch and its compilers (9-11 s on the H200
    image, bench/results/cold_start_h200_timeline.json) while the caller goes on. Whatever
    is not handed to a SideBySide is stopped at exit."""
    threads = max(1, (os.cpu_count() or 2) // count)  # inductor's kernel-compiling threads each
    # diffusers' switches, as a worker imports diffusers to unpickle the VAE's blocks (this
    # process sets them anyway before its own diffusers import), and the parent's import
    # path, so a worker finds every class the parent could unpickle
    set_diffusers_env()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    processes = [subprocess.Popen([sys.executable, "-m", "fastsync.accel.parallel_compile", str(threads)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
                 for _ in range(count)]
    atexit.register(stop_workers, processes)
    return processes


def stop_workers(processes: list[subprocess.Popen]) -> None:
    """Stop workers at once, rather than let them exit: exiting took 26 s on the H200 (8
    workers, each with inductor's pool of kernel compilers; 3.8 s on a 2-core CPU), all of it
    spent before the first job (cold_start_h200_timeline.json, parallel_compile_exit_cpu.json)."""
    for process in processes:
        if process.returncode is None:
            process.kill()
            process.wait()
        process.stdin.close()
        process.stdout.close()


@dataclass
class ParallelStats:
    workers: int = 0
    submitted: int = 0  # distinct calls sent to the workers
    compiled: int = 0  # of which came back compiled
    wall_s: float = 0.0  # from the first call listed to the last result loaded
    worker_compile_s: float = 0.0  # summed over the workers
    # where the wall goes, in seconds from the first call listed
    first_ready_s: float = 0.0  # the first worker has imported torch and is ready
    last_ready_s: float = 0.0  # the last one is
    listing_s: float = 0.0  # the listing pass has ended
    last_result_s: float = 0.0  # the last result has come back
    longest_compile_s: float = 0.0  # one region's compile in a worker, the longest

    def timeline(self) -> dict[str, float]:
        names = ("first_ready_s", "last_ready_s", "listing_s", "last_result_s", "longest_compile_s",
                 "worker_compile_s")
        return {name: round(getattr(self, name), 3) for name in names}


class SideBySide:
    """The `collect` of `RegionCompiler.deferring`: hands each new call to a free worker at
    once, so that the workers start and compile while the listing pass still runs.

    Calls waiting for a worker go out largest region first (by its module count), the
    classic rule for a short makespan. The listing pass ends long before the compiles do,
    and the VAE's decoder is listed last. In listing order, on an H200, the last result came
    31.4 s into the phase, although the listing had ended at 3.0 s, no compile took over
    18.0 s and the 26 compiles summed to 131 s over 8 workers
    (bench/results/cold_start_h200_session13.json). Not yet measured with this order.

        with SideBySide(store, 8) as side, store.deferring(side):
            ...  # run the model once, eagerly
        side.stats

    `started`: workers from `start_workers`, used instead of starting `workers` new ones on
    the first call; stopped on the way out, used or not.
    """

    def __init__(self, store: precompile.RegionCompiler, workers: int,
                 started: list[subprocess.Popen] | None = None):
        self.store = store
        self.started_workers = started
        self.stats = ParallelStats(workers=len(started) if started else workers)
        # (0, -module count, listing index, task file), then one (1, 0, i, None) per driver: stop
        self.tasks: queue.PriorityQueue = queue.PriorityQueue()
        self.keys: dict[Path, str] = {}  # payload file -> its key
        self.done: list[tuple[Path, float]] = []
        self.seen: set[tuple[str, bytes]] = set()  # calls alike in key and layout compile once
        self.folder: Path | None = None
        self.drivers: list[threading.Thread] = []
        self.processes: list[subprocess.Popen] = []
        self.lock = threading.Lock()
        self.started = 0.0

    def __enter__(self) -> SideBySide:
        return self

    def __call__(self, key: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
        try:
            payload = layout_payload(module, args, kwargs)
        except Exception as exc:  # noqa: BLE001 - anything unpicklable: the main process compiles it
            log.warning("compiling %s in this process: it does not pickle (%s)", type(module).__qualname__, exc)
            return
        if (key, payload) in self.seen:
            return
        self.seen.add((key, payload))
        if self.folder is None:
            self._start()
        index = len(self.keys)
        task = self.folder / f"{index}.task"
        task.write_bytes(payload)
        self.keys[task] = key
        self.tasks.put((0, -sum(1 for _ in module.modules()), index, task))
        self.stats.submitted += 1

    def _start(self) -> None:
        self.started = time.perf_counter()
        self.folder = Path(tempfile.mkdtemp(prefix="fastsync-compile-"))
        self.processes = self.started_workers or start_workers(self.stats.workers)
        for process in self.processes:
            driver = threading.Thread(target=self._drive, args=(process,), daemon=True,
                                      name="fastsync-compile-driver")
            driver.start()
            self.drivers.append(driver)

    def _drive(self, process: subprocess.Popen) -> None:
        """Feed one worker a task at a time until the queue says stop or the worker dies."""
        if process.stdout.readline().strip() != "ready":
            log.warning("a compile worker did not start (exit code %s)", process.wait())
            return
        with self.lock:
            ready = self._since_start()
            self.stats.first_ready_s = min(self.stats.first_ready_s or ready, ready)
            self.stats.last_ready_s = max(self.stats.last_ready_s, ready)
        while (task := self.tasks.get()[-1]) is not None:
            process.stdin.write(f"{task}\n")
            process.stdin.flush()
            reply = process.stdout.readline().strip()
            if reply.startswith("ok "):
                with self.lock:
                    self.done.append((task, float(reply[3:])))
                    self.stats.last_result_s = self._since_start()
                continue
            if reply.startswith("error "):
                log.warning("a compile worker failed (%s); that region compiles in this process", reply[6:])
                continue
            log.warning("a compile worker stopped (exit code %s); its regions compile in this process",
                        process.wait())
            return

    def _since_start(self) -> float:
        return time.perf_counter() - self.started

    def __exit__(self, kind, value, traceback) -> None:
        if self.folder is None:  # nothing was listed: every region came from disk
            stop_workers(self.started_workers or [])
            return
        self.stats.listing_s = self._since_start()
        try:
            for i, _ in enumerate(self.drivers):
                self.tasks.put((1, 0, i, None))
            if kind is not None:  # the listing pass failed: stop now, keep nothing
                for process in self.processes:
                    process.kill()  # the drivers' reads end, and so do they
            for driver in self.drivers:
                driver.join()
            if kind is None:
                self._collect()
        finally:
            stop_workers(self.processes)  # every result is in or given up: nothing left for them
            shutil.rmtree(self.folder, ignore_errors=True)
            self.stats.wall_s = self._since_start()

    def _collect(self) -> None:
        compiled: dict[str, list[bytes]] = {}
        for task, seconds in sorted(self.done, key=lambda done: int(done[0].stem)):  # in listing order
            compiled.setdefault(self.keys[task], []).append(task.with_suffix(".out").read_bytes())
            self.stats.compiled += 1
            self.stats.worker_compile_s += seconds
            self.stats.longest_compile_s = max(self.stats.longest_compile_s, seconds)
        for key, blobs in compiled.items():
            self.store.add_compiled(key, blobs)


if __name__ == "__main__":
    _worker_main(int(sys.argv[1]))
