"""The `fastsync` command line. Each sub-command lives in its own small function;
heavy modules are imported inside them so `fastsync --help` stays instant."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
from pathlib import Path

from fastsync import __version__
from fastsync.errors import FastsyncError
from fastsync.output import AUDIO_CHOICES, CRF


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--version", choices=["1.5", "1.6"], default="1.6",
                   help="LatentSync release: 1.5 works at 256 px, 1.6 at 512 px (default 1.6)")
    g.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"),
                   help="local folder in the official layout (default ./checkpoints)")
    g.add_argument("--random-weights", action="store_true",
                   help="build every model with seeded random weights (no download; output is noise in the mouth)")
    g.add_argument("--model-size", choices=["full", "tiny"], default="full",
                   help="'tiny' = narrow UNet for fast CPU runs (with --random-weights, or tiny test weights)")
    g.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    g.add_argument("--face-backend", choices=["auto", "insightface", "dlib"], default="auto",
                   help="auto = InsightFace when its models are in the checkpoint dir, else the embedded dlib one")


def _add_mode_options(g) -> None:
    g.add_argument("--mode", choices=["fast", "reference"], default="fast",
                   help="fast = every fastsync optimisation; reference = behave like the reference code")
    host = g.add_mutually_exclusive_group()
    host.add_argument("--host-processes", dest="host_processes", action="store_const", const=True, default=None,
                      help="fast mode: decode/align and paste/encode in two worker processes (the default on a GPU)")
    host.add_argument("--host-threads", dest="host_processes", action="store_const", const=False,
                      help="fast mode: the same in threads of the job process (the default on a CPU)")


def _add_output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--output-audio", choices=AUDIO_CHOICES, default="source",
                   help="the output's audio track: source = the audio file's own sample rate and channels (up to "
                        "48 kHz stereo, the default); reference = 16 kHz mono, as the reference writes it")
    g.add_argument("--crf", type=int, default=CRF,
                   help="H.264 quality, 0 (lossless) to 51: lower is closer to the frames and larger (default 18, "
                        "as the reference)")


def _add_app_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("web server")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 = every interface)")
    g.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    g.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link (off by default)")
    g.add_argument("--work-dir", type=Path, default=None,
                   help="folder for job outputs and landmark caches (default: a new temp folder)")


def _add_run_options(p: argparse.ArgumentParser, *, batch: bool = False) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    g.add_argument("--guidance", type=float, default=1.5, help="classifier-free guidance scale (default 1.5)")
    g.add_argument("--seed", type=int, default=1247, help="noise seed (default 1247, as the reference)")
    g.add_argument("--deepcache-interval", type=int, default=3, help="DeepCache interval; 0 = off (default 3)")
    _add_mode_options(g)
    if batch:  # jobs on one video share its landmarks anyway; this keeps them for later batches
        g.add_argument("--landmarks-dir", type=Path, default=None,
                       help="folder keeping each video's face landmarks between batches (default: kept for this "
                            "batch only; jobs on one video detect its faces once either way)")
    else:
        g.add_argument("--landmarks-cache", type=Path, default=None,
                       help="JSON file keeping face landmarks between runs on the same video (dubbing many tracks)")
    g.add_argument("--face-near", default=None, metavar="X,Y",
                   help="where a frame shows several faces, lip-sync the one nearest this point (pixels of the "
                        "video as displayed) instead of the largest, as the reference does"
                        + ("; a job's face_near column overrides it" if batch else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastsync", description="Fast LatentSync-compatible lip sync")
    parser.add_argument("--version", action="version", version=f"fastsync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="lip-sync a video to an audio track")
    p.add_argument("--video", type=Path, required=True,
                   help="video of a person talking, or a photo of a face (png, jpg, ...): every frame shows it")
    p.add_argument("--audio", type=Path, required=True,
                   help="the new speech: any audio file ffmpeg reads (wav, mp3, m4a, ...) or a video's audio track")
    p.add_argument("--output", type=Path, required=True,
                   help="the lip-synced mp4 (H.264 + AAC), written whole or not at all")
    p.add_argument("--devices", default=None,
                   help="denoise the job's chunks on several devices, one engine each: cuda:0,cuda:1 or all "
                        "(every visible GPU); decoding, paste-back and encoding stay one pipeline")
    _add_model_options(p)
    _add_run_options(p)
    _add_output_options(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("batch", help="run many jobs listed in a CSV/JSON file, loading the models once")
    p.add_argument("jobs", type=Path, help="CSV (header video,audio,output) or JSON list; paths relative to it")
    p.add_argument("--overwrite", action="store_true", help="redo jobs whose output already exists")
    p.add_argument("--report", type=Path, default=None, metavar="FILE",
                   help="keep every job's outcome (status, device, error, frames, seconds) in FILE, .json or "
                        ".csv, rewritten whole after each job")
    p.add_argument("--devices", default=None,
                   help="spread the jobs over several devices, one engine each: cuda:0,cuda:1 or all "
                        "(every visible GPU), or cpu,cpu (CPU workers)")
    _add_model_options(p)
    _add_run_options(p, batch=True)
    _add_output_options(p)
    p.set_defaults(func=_cmd_batch)

    p = sub.add_parser("app", help="serve a web UI (gradio) that lip-syncs uploads; loads the models once")
    p.add_argument("--devices", default=None,
                   help="denoise each job's chunks on several devices, one engine each: cuda:0,cuda:1 or all")
    _add_model_options(p)
    _add_mode_options(p.add_argument_group("mode"))
    _add_app_options(p)
    _add_output_options(p)
    p.set_defaults(func=_cmd_app)

    p = sub.add_parser("warmup", help="compile fast mode now and keep it on disk, so later processes start sooner")
    _add_model_options(p)
    p.add_argument("--deepcache-interval", type=int, default=3,
                   help="the DeepCache interval the jobs will use (default 3)")
    p.set_defaults(func=_cmd_warmup, mode="fast", host_processes=False)

    p = sub.add_parser("download", help="fetch the official checkpoints from the Hugging Face hub")
    p.add_argument("--version", choices=["1.5", "1.6"], default="1.6")
    p.add_argument("--dir", type=Path, default=Path("checkpoints"))
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("info", help="versions, devices, checkpoint files present or missing, compiled blocks kept")
    p.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"),
                   help="the folder to check, in the official layout (default ./checkpoints)")
    p.add_argument("--version", choices=["1.5", "1.6"], default="1.6", help="LatentSync release (default 1.6)")
    p.add_argument("--json", action="store_true", help="print the same as JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("check-parity", help="run every golden case in DIR through fastsync")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=_cmd_check_parity)

    p = sub.add_parser("profile", help="profile a run (reference or fast mode), or compare two reports")
    p.add_argument("--video", type=Path)
    p.add_argument("--audio", type=Path)
    p.add_argument("--out", type=Path, help="folder for the trace and report.{json,md}")
    p.add_argument("--reference-output", type=Path, help="video to measure PSNR/SSIM against")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="two report.json files")
    _add_model_options(p)
    _add_run_options(p)
    _add_output_options(p)
    p.set_defaults(func=_cmd_profile)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from fastsync.api import run_from_args

    return run_from_args(args)


def _cmd_batch(args: argparse.Namespace) -> int:
    from fastsync.api import (
        LipSync,
        devices_from_args,
        engine_options_from_args,
        face_near_from_args,
        sampling_from_args,
    )
    from fastsync.batch import landmark_files, read_jobs, run_batch
    from fastsync.batch_report import BatchReport, check_report_path

    jobs = read_jobs(args.jobs)  # a bad batch file or option fails before any model loads
    if args.report is not None:
        check_report_path(args.report)
    near = face_near_from_args(args)
    if near is not None:  # the jobs that name no face of their own
        jobs = [job if job.face_near is not None else dataclasses.replace(job, face_near=near) for job in jobs]
    sampling = sampling_from_args(args)
    devices = devices_from_args(args)
    if devices is not None:  # the host-stage choice follows their kind (one kind per batch)
        args = argparse.Namespace(**{**vars(args), "device": devices[0]})
    options = engine_options_from_args(args)
    report = BatchReport(jobs, args.report, args.jobs)  # every job pending, in the file already
    with landmark_files(jobs, args.landmarks_dir) as jobs:
        if devices is not None:  # one device of them runs in this process, as without --devices
            from fastsync.batch_devices import run_batch_on_devices

            _, _, failed = run_batch_on_devices(options, jobs, devices, sampling=sampling, overwrite=args.overwrite,
                                                report=report)
        else:
            engine = LipSync.from_options(options)
            _, _, failed = run_batch(engine, jobs, sampling=sampling, overwrite=args.overwrite, report=report)
    return 1 if failed else 0


def _cmd_warmup(args: argparse.Namespace) -> int:
    from fastsync.api import warmup_from_args

    return warmup_from_args(args)


def _cmd_app(args: argparse.Namespace) -> int:
    from fastsync.app.serve import serve_from_args

    return serve_from_args(args)


def _cmd_download(args: argparse.Namespace) -> int:
    from fastsync.checkpoints import download

    download(args.version, args.dir)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from fastsync.tools.info import info_from_args

    return info_from_args(args)


def _cmd_check_parity(args: argparse.Namespace) -> int:
    from fastsync.tools.parity import check_parity

    results = check_parity(args.dir)
    failed = [r for r in results if not r.passed]
    print(f"{len(results) - len(failed)}/{len(results)} cases passed")
    return 1 if failed or not results else 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from fastsync.tools.profiler import profile_from_args

    return profile_from_args(args)


def _interrupt_on_sigterm() -> None:
    """A scheduler's SIGTERM unwinds like Ctrl-C, so the writer removes its temp file."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    from fastsync.tools.extra_imports import LEAN_IMPORTS_ENV

    # This process is fastsync's own: diffusers need not import what only other code would use
    # (fastsync.tools.extra_imports); compile workers inherit the setting.
    os.environ.setdefault(LEAN_IMPORTS_ENV, "1")
    args = build_parser().parse_args(argv)
    _interrupt_on_sigterm()
    try:
        return args.func(args)
    except FastsyncError as exc:
        print(f"fastsync: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastsync: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
