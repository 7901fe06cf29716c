"""The web UI's job logic, free of gradio so that it can be tested on its own.

One `JobRunner` wraps one loaded engine and serves job after job: each job writes into a
fresh folder of its own, so no two jobs (queued one after the other, or from two users)
ever share an output path, and the folders of old jobs are removed as new ones start.
Face landmarks are kept per video (by content hash), so re-running a video with another
audio track skips face detection.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from fastsync.api import LipSync
from fastsync.denoise import SamplingOptions
from fastsync.errors import FastsyncError, InputError
from fastsync.face.cache import file_sha256
from fastsync.face.choice import optional_point
from fastsync.output import OutputOptions
from fastsync.pipeline import JobReport, check_inputs
from fastsync.progress import BARS

T = TypeVar("T")
POLL_S = 0.25  # how often the caller's thread passes the latest progress on
KEEP_JOBS = 8  # job folders kept on disk; the UI has copied older outputs into its own cache
RANDOM_WEIGHTS_NOTE = "random weights: the mouth region will be noise"

# (fraction of the job done in [0, 1], a line saying what runs now)
ReportProgress = Callable[[float, str], None]


@dataclass(frozen=True)
class JobResult:
    output: Path
    report: JobReport
    text: str  # the report as the page shows it


def sampling_options(steps, guidance, seed, deepcache_interval) -> SamplingOptions:
    """SamplingOptions from form values (sliders may send 20.0 for 20); a bad value is an
    error for the user, not a crash."""
    try:
        return SamplingOptions(steps=int(steps), guidance=float(guidance), seed=int(seed),
                               deepcache_interval=int(deepcache_interval))
    except (TypeError, ValueError) as exc:
        raise FastsyncError(f"bad sampling option: {exc}", hint="set the sampling controls to valid values") from exc


# The page's choices of audio track, as shown -> OutputOptions.audio (an API caller may pass either).
AUDIO_TRACKS = {"the audio file's own (its rate and channels)": "source",
                "16 kHz mono, as LatentSync writes it": "reference"}


def output_options(audio_track, crf, defaults: OutputOptions) -> OutputOptions:
    """OutputOptions from form values; an empty value keeps the server's (`defaults`)."""
    audio = defaults.audio if audio_track in (None, "") else AUDIO_TRACKS.get(audio_track, audio_track)
    try:
        return OutputOptions(audio=audio, crf=defaults.crf if crf in (None, "") else int(crf))
    except (TypeError, ValueError) as exc:
        raise FastsyncError(f"bad output option: {exc}", hint="set the output controls to valid values") from exc


def report_text(report: JobReport) -> str:
    """The summary line, then each stage's seconds (they overlap in fast mode, so they may
    add up to more than the wall time)."""
    lines = [report.summary().replace(str(report.output), report.output.name)]
    for name, seconds in report.stages.items():
        if seconds > 0:
            lines.append(f"  {name.split('|', 1)[-1]:<20} {seconds:7.2f} s")
    return "\n".join(lines)


class StageProgress:
    """Turns the pipeline's per-stage frame counts into one fraction: the three stages
    (align, denoise, paste+write) weigh the same, since they overlap in fast mode."""

    def __init__(self, report: ReportProgress):
        self._report = report
        self._done = {key: 0 for key, _ in BARS}
        self._lock = threading.Lock()  # stages report from different worker threads

    def __call__(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            self._done[stage] = max(self._done[stage], done)
            fraction = sum(self._done.values()) / (len(self._done) * max(total, 1))
            labels = dict(BARS)
            text = ", ".join(f"{labels[key].strip()} {n}/{total}" for key, n in self._done.items())
            self._report(min(fraction, 1.0), text)


def poll_progress(job: Callable[[ReportProgress], T], report: ReportProgress, every: float = POLL_S) -> T:
    """Run `job` on a thread of its own and pass its latest progress to `report` from the
    calling thread, every `every` seconds. The pipeline reports from its worker threads,
    but a UI's progress object may only work on the thread of the request (gradio's finds
    its request through context variables, which worker threads do not inherit)."""
    latest: list[tuple[float, str]] = []
    lock = threading.Lock()

    def keep(fraction: float, text: str) -> None:
        with lock:
            latest[:] = [(fraction, text)]

    with ThreadPoolExecutor(1, thread_name_prefix="app-job") as pool:
        future = pool.submit(job, keep)
        while not wait([future], timeout=every).done:
            with lock:
                last = latest[0] if latest else None
            if last is not None:
                report(*last)
        return future.result()


class JobRunner:
    def __init__(self, engine: LipSync, work_dir: Path | None = None, keep_jobs: int = KEEP_JOBS):
        self.engine = engine
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="fastsync-app-"))
        self.jobs_dir = self.work_dir / "jobs"
        self.landmarks_dir = self.work_dir / "landmarks"
        self.keep_jobs = keep_jobs
        # One engine, one job at a time: the UI's queue already serialises its jobs; this
        # also covers any other caller (the engine's caches and CUDA graphs are not shared-safe).
        self._lock = threading.Lock()

    @property
    def random_weights(self) -> bool:
        return self.engine.components.options.random_weights

    def describe(self) -> str:
        o = self.engine.components.options
        weights = "random weights" if self.random_weights else "trained weights"
        return (f"LatentSync {o.version}, {o.model_size} model with {weights} on {self.engine.components.device}, "
                f"{o.mode} mode, loaded in {self.engine.load_seconds:.1f} s")

    def run(self, video: str | Path | None, audio: str | Path | None, sampling: SamplingOptions,
            progress: ReportProgress | None = None, face_near: tuple[float, float] | None = None,
            encoding: OutputOptions | None = None) -> JobResult:
        """Lip-sync `video` to `audio` into a new job folder; FastsyncError names a bad input.
        `face_near`: where frames show several faces, the one nearest this point (face.choice).
        `encoding`: the file's audio track and crf (None: the engine's, `fastsync app`'s flags)."""
        video, audio = _required(video, "video or photo"), _required(audio, "audio")
        with self._lock:
            folder = self.new_job_dir()
            try:
                report = self._run_in(folder, video, audio, sampling, progress, face_near, encoding)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)  # a failed job leaves nothing behind
                raise
        return JobResult(report.output, report, report_text(report))

    def _run_in(self, folder: Path, video: Path, audio: Path, sampling: SamplingOptions,
                progress: ReportProgress | None, face_near: tuple[float, float] | None,
                encoding: OutputOptions | None = None) -> JobReport:
        output = folder / f"{video.stem}_synced.mp4"
        # Bad files fail now with fastsync's own messages, before the video is hashed for the
        # landmark cache (the job checks them again: one more audio decode, which is cheap).
        check_inputs(video, audio, output)
        if progress is not None:
            progress(0.0, "reading audio")
        return self.engine.run(video, audio, output, sampling=sampling,
                               landmarks_cache=self._landmarks_cache(video, face_near), face_near=face_near,
                               encoding=encoding,
                               on_progress=None if progress is None else StageProgress(progress))

    def new_job_dir(self) -> Path:
        """A fresh, empty folder for one job; the oldest folders go when there are too many."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._remove_old_jobs()
        # The clock in the name orders the folders by creation (a folder's mtime moves as its
        # output is written); mkdtemp's random tail keeps two in one nanosecond apart.
        return Path(tempfile.mkdtemp(prefix=f"job-{time.time_ns():020d}-", dir=self.jobs_dir))

    def _remove_old_jobs(self) -> None:
        """Keep the newest `keep_jobs - 1` folders, making room for the one about to start."""
        folders = sorted(p for p in self.jobs_dir.iterdir() if p.is_dir() and p.name.startswith("job-"))
        for old in folders[: max(0, len(folders) - self.keep_jobs + 1)]:
            shutil.rmtree(old, ignore_errors=True)

    def _landmarks_cache(self, video: Path, face_near: tuple[float, float] | None = None) -> Path:
        # The cache file checks the video's hash itself; naming it by the hash as well lets
        # every uploaded copy of one video (each lands in a new upload folder) share it. The
        # faces chosen near a point are another set of landmarks: another file.
        self.landmarks_dir.mkdir(parents=True, exist_ok=True)
        near = "" if face_near is None else "-near{:g}_{:g}".format(*face_near)
        return self.landmarks_dir / f"{file_sha256(video)}{near}.json"


def user_message(exc: FastsyncError) -> str:
    """fastsync's message with the file named as the user knows it: an upload sits in a
    temp folder, whose path means nothing to whoever uploaded it."""
    text = str(exc)
    return text if exc.path is None else text.replace(str(exc.path), exc.path.name)


def first_frame(path: str | Path | None) -> np.ndarray | None:
    """The picture to click on for the face field: a video's first frame (or the photo),
    upright as displayed, in the pixels --face-near counts. None for no file or a file that
    does not decode: the job itself then names the problem."""
    if path is None or str(path) == "":
        return None
    from fastsync.media.video import iter_frames_25fps

    try:
        return next(iter_frames_25fps(path, max_frames=1), None)
    except FastsyncError:
        return None


def clicked_point(index) -> str:
    """The face field's text for a click at image pixel `index` (x, y)."""
    x, y = index
    return f"{int(round(x))},{int(round(y))}"


def face_point(text: str | None) -> tuple[float, float] | None:
    """The page's "face near" field: empty for the reference's choice (the largest face)."""
    return optional_point(text, what="face near")


def face_input(video: str | Path | None, photo: str | Path | None) -> str | Path | None:
    """The page's video, or its photo in the video's place (a photo is a video of one
    frame); InputError when both were given."""
    given = [path for path in (video, photo) if path not in (None, "")]
    if len(given) > 1:
        raise InputError("both a video and a photo were given",
                         hint="lip-sync one of them: clear the other, then press Lip-sync")
    return given[0] if given else None


def _required(path: str | Path | None, what: str) -> Path:
    if path is None or str(path) == "":
        raise InputError(f"no {what} file was given", hint=f"upload a {what} file, then press Lip-sync")
    return Path(path)
