"""`fastsync app`: load the engine once, then serve the page until Ctrl-C."""

from __future__ import annotations

import argparse

from fastsync.app import require_gradio


def serve_from_args(args: argparse.Namespace) -> int:
    require_gradio()  # before the load, which takes a minute with the full model
    from fastsync.api import LipSync, devices_options, engine_options_from_args
    from fastsync.app.jobs import RANDOM_WEIGHTS_NOTE, JobRunner
    from fastsync.app.ui import build_app

    engine = LipSync.from_options(engine_options_from_args(args, **devices_options(args)))
    # Compile and capture before the page opens (minutes the first time on a machine, seconds
    # once fast mode's compiled blocks are on disk), so no visitor's first job waits for it.
    spent = engine.warm_up()
    if spent:
        print(f"fastsync app: warmed up in {spent['warmup_compile_capture_s']:.1f} s", flush=True)
    engine.start_devices()  # --devices: the further GPUs' workers, loaded before the page opens too
    if engine.devices is not None:
        print(f"fastsync app: each job's chunks are denoised on {engine.devices.own_label} and "
              f"{', '.join(engine.devices.labels)}", flush=True)
    runner = JobRunner(engine, work_dir=args.work_dir)
    print(f"fastsync app: {runner.describe()}; job files in {runner.work_dir}", flush=True)
    if runner.random_weights:
        print(f"fastsync app: {RANDOM_WEIGHTS_NOTE}", flush=True)
    app = build_app(runner)
    # show_error: an unexpected failure's message reaches the page, not only this console.
    app.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True)
    return 0
