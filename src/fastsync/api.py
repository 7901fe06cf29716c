"""The Python API: load once, lip-sync many times.

    from fastsync import api
    engine = api.LipSync.load(version="1.6", checkpoint_dir="checkpoints")
    report = engine.run("talk.mp4", "speech.wav", "out.mp4")
    print(report.summary())
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fastsync import stages
from fastsync.denoise import SamplingOptions
from fastsync.engine import Components, EngineOptions, FastOptions, load_components, pick_device
from fastsync.errors import FastsyncError
from fastsync.face.choice import parse_point
from fastsync.memory import device_memory_errors
from fastsync.output import OutputOptions
from fastsync.pipeline import Job, JobReport, check_inputs
from fastsync.progress import ProgressCallback


class LipSync:
    def __init__(self, components: Components, load_seconds: float = 0.0):
        self.components = components
        self.load_seconds = load_seconds
        self.warmed = False
        self.devices = None  # the further devices' workers (EngineOptions.chunk_devices), from the first run

    def start_devices(self, sampling: SamplingOptions | None = None) -> None:
        """Start the further devices' workers (EngineOptions.chunk_devices) now, not at the
        first run; each loads and warms up its own engine. Call after `warm_up`: the workers
        then load this process's compiled blocks from disk instead of compiling them again."""
        chunk_devices = self.components.options.chunk_devices
        if chunk_devices and self.devices is None:
            from fastsync.job_devices import ChunkDevices

            self.devices = ChunkDevices(self.components.options, list(chunk_devices), sampling or SamplingOptions())

    def close(self) -> None:
        """Stop the further devices' worker processes, if any (they also end with this process)."""
        if self.devices is not None:
            self.devices.close()
            self.devices = None

    @classmethod
    def load(cls, **engine_options) -> LipSync:
        """Keyword arguments are EngineOptions fields (version, checkpoint_dir, random_weights, ...)."""
        return cls.from_options(EngineOptions(**engine_options))

    @classmethod
    def from_options(cls, options: EngineOptions) -> LipSync:
        started = time.perf_counter()
        device = pick_device(options.device)
        if options.chunk_devices:  # checked before anything loads
            from fastsync.devices import parse_devices

            parse_devices([str(device), *options.chunk_devices])
        with device_memory_errors(device, options.mode, "loading the models"):
            components = load_components(options)
        return cls(components, time.perf_counter() - started)

    def warm_up(self, sampling: SamplingOptions | None = None) -> dict[str, float]:
        """Pay one-time costs (compilation, graph capture) now; returns their seconds by name.
        The first `run` calls it if nobody has: its compile workers then compile the blocks side
        by side, where the job's first chunk would compile them one after another."""
        from fastsync.accel import warmup

        c = self.components
        with device_memory_errors(c.device, c.options.mode, "compiling and capturing fast mode"):
            spent = warmup.warm_up(c, sampling or SamplingOptions())
        self.warmed = True  # not after a failure: the next run tries again
        return spent

    def run(self, video: str | Path, audio: str | Path, output: str | Path, *,
            sampling: SamplingOptions | None = None, progress: bool = False,
            clock: stages.StageClock | None = None, landmarks_cache: str | Path | None = None,
            host_profile: str | Path | None = None, on_progress: ProgressCallback | None = None,
            face_near: tuple[float, float] | None = None, encoding: OutputOptions | None = None) -> JobReport:
        """Lip-sync `video` to `audio` into `output` (written atomically). `landmarks_cache`:
        a JSON file that keeps face landmarks between runs on the same video. `host_profile`:
        a folder where host worker processes (FastOptions.host_processes) write CPU traces;
        their top ops come back in the report (what `fastsync profile` uses). `on_progress`:
        called as (stage, frames done, frames in the job) whenever a stage moves on; it runs
        on worker threads, so it must be quick and thread-safe (the web UI's bar uses it).
        `face_near`: (x, y) in pixels of the video as displayed; in a frame with several
        faces the one nearest that point is lip-synced, not the largest (fastsync.face.choice).
        `encoding`: this job's audio track and crf (fastsync.output); None: the engine's
        (`EngineOptions.output`)."""
        sampling = sampling or SamplingOptions()
        if not self.warmed:  # nothing to do on a CPU or in reference mode
            self.warm_up(sampling)
        self.start_devices(sampling)
        job = Job(self.components, sampling, progress=progress, clock=clock,
                  landmarks_cache=None if landmarks_cache is None else Path(landmarks_cache),
                  host_profile=None if host_profile is None else Path(host_profile), on_progress=on_progress,
                  devices=self.devices, face_near=face_near, encoding=encoding)
        with device_memory_errors(self.components.device, self.components.options.mode, f"lip-syncing {Path(video).name}"):
            return job.run(Path(video), Path(audio), Path(output))


def engine_options_from_args(args: argparse.Namespace, **overrides) -> EngineOptions:
    values = dict(version=args.version, checkpoint_dir=args.checkpoint_dir, random_weights=args.random_weights,
                  model_size=args.model_size, device=args.device, face_backend=args.face_backend, mode=args.mode)
    if getattr(args, "output_audio", None) is not None:  # run, batch, app and profile have these
        values["output"] = OutputOptions(audio=args.output_audio, crf=args.crf)
    chosen = getattr(args, "host_processes", None)  # --host-processes / --host-threads
    if chosen is not None:
        values["fast"] = FastOptions(host_processes=chosen)
    values.update(overrides)
    return EngineOptions(**values)


def sampling_from_args(args: argparse.Namespace) -> SamplingOptions:
    try:
        return SamplingOptions(steps=args.steps, guidance=args.guidance, seed=args.seed,
                               deepcache_interval=args.deepcache_interval)
    except ValueError as exc:  # a bad option value: a usage error, not a crash
        raise FastsyncError(str(exc), hint="see `fastsync run --help`") from exc


def face_near_from_args(args: argparse.Namespace) -> tuple[float, float] | None:
    """`--face-near X,Y` of run, profile and batch, checked before any load; None when not given."""
    return None if args.face_near is None else parse_point(args.face_near)


def run_from_args(args: argparse.Namespace) -> int:
    sampling = sampling_from_args(args)  # validate options and inputs before loading anything
    face_near = face_near_from_args(args)
    check_inputs(args.video, args.audio, args.output)
    overrides = devices_options(args)
    clock = stages.StageClock()
    with clock.stage(stages.INIT):
        engine = LipSync.from_options(engine_options_from_args(args, **overrides))
    try:
        report = engine.run(args.video, args.audio, args.output, sampling=sampling, progress=True, clock=clock,
                            landmarks_cache=args.landmarks_cache, face_near=face_near)
    finally:
        engine.close()
    print(report.summary())
    return 0


def devices_from_args(args: argparse.Namespace) -> list[str] | None:
    """`--devices` of run, app and batch, checked before any load; None when not given."""
    if getattr(args, "devices", None) is None:
        return None
    if args.device is not None:
        raise FastsyncError(f"{args.command} got both --device and --devices",
                            hint="give one: --device cuda:1 for one GPU, --devices cuda:0,cuda:1 for several")
    from fastsync.devices import parse_devices

    return parse_devices(args.devices)


def devices_options(args: argparse.Namespace) -> dict:
    """`--devices a,b,c` (run, app): the engine on a, workers on b and c."""
    devices = devices_from_args(args)
    return {} if devices is None else {"device": devices[0], "chunk_devices": tuple(devices[1:])}


def warmup_from_args(args: argparse.Namespace) -> int:
    """`fastsync warmup`: load fast mode and compile its blocks now, keeping them on disk
    (e.g. while a container image is built), so later processes only load them."""
    try:
        sampling = SamplingOptions(deepcache_interval=args.deepcache_interval)
    except ValueError as exc:
        raise FastsyncError(str(exc), hint="see `fastsync warmup --help`") from exc
    engine = LipSync.from_options(engine_options_from_args(args, mode="fast", fast=FastOptions()))
    c = engine.components
    print(f"models loaded on {c.device}: " + ", ".join(f"{k} {v:.1f} s" for k, v in c.load_timings.items()))
    spent = engine.warm_up(sampling)
    if not spent:
        print(f"nothing to compile on {c.device}: fast mode compiles and captures CUDA graphs on a GPU only")
        return 0
    print(f"warm-up (compile, load and capture) {spent['warmup_compile_capture_s']:.1f} s")
    store = c.cache.get("region_compiler")
    if store is None:
        print("this torch cannot keep compiled blocks on disk: later processes trace them again "
              "(inductor's cache still spares them the code generation)")
    else:
        s = store.stats
        detail = []
        if s.received:
            detail.append(f"{s.received} in {spent['regions_parallel_workers']} worker processes, "
                          f"{spent['regions_parallel_s']:.1f} s")
        if s.compiled:
            detail.append(f"{s.compiled} in this process, {s.compile_s:.1f} s")
        print(f"compiled {s.compiled + s.received} blocks ({'; '.join(detail) or 'none needed'}), "
              f"loaded {s.loaded} from disk in {s.load_s:.1f} s; kept in {store.directory}")
    from fastsync.tools import extra_imports
    from fastsync.tools.bytecode import missing_hint

    for hint in (missing_hint(), extra_imports.hint()):
        if hint:
            print(f"hint: {hint}")
    return 0
