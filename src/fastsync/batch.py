"""`fastsync batch JOBS`: many lip-sync jobs with the models loaded once.

JOBS is a CSV file with a header `video,audio,output` (paths relative to the CSV's
folder) or a JSON list of {"video", "audio", "output"} objects. Optional columns (keys)
`steps`, `guidance`, `seed` and `deepcache_interval` set a job's sampling; an empty cell
keeps the batch's value (the command line's); `output_audio` and `crf` likewise set its
file's audio track and quality (fastsync.output). `face_near` ("X,Y") picks the face nearest
that point where a frame shows several (fastsync.face.choice); empty, the command line's
--face-near or the largest face. A failing job is
reported and skipped — its output is never half-written — and the others go on; the
exit status says whether all succeeded. A job whose output already exists is skipped
unless --overwrite is given, so an interrupted batch can simply be run again. With
--devices, fastsync.batch_devices runs the jobs on several devices by the same rules.

Jobs on one video (dubbing it into several languages) detect its faces once: each video
gets a landmark file (fastsync.face.cache) for the batch's lifetime, or kept in
--landmarks-dir between batches.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from fastsync.batch_report import BatchReport, job_record
from fastsync.denoise import SamplingOptions
from fastsync.errors import FastsyncError, InputError
from fastsync.face.choice import optional_point
from fastsync.output import OutputOptions

FIELDS = ("video", "audio", "output")
FACE_NEAR = "face_near"
# A job's own sampling values: column -> its type (SamplingOptions' field of that name).
SETTINGS = {"steps": int, "guidance": float, "seed": int, "deepcache_interval": int}
# A job's own output values: column -> OutputOptions field.
ENCODING = {"output_audio": "audio", "crf": "crf"}


@dataclass(frozen=True)
class BatchJob:
    video: Path
    audio: Path
    output: Path
    landmarks: Path | None = None  # the video's landmark file (None: detect its faces afresh)
    settings: tuple[tuple[str, int | float], ...] = ()  # its own sampling values, (name, value) pairs
    face_near: tuple[float, float] | None = None  # the face nearest this point, not the largest
    encoding_values: tuple[tuple[str, str | int], ...] = ()  # its own OutputOptions values, (field, value)

    def sampling(self, batch: SamplingOptions | None) -> SamplingOptions | None:
        """The batch's sampling with this job's own values in place (None: the engine's default)."""
        if not self.settings:
            return batch
        return replace(batch or SamplingOptions(), **dict(self.settings))

    def encoding(self, engine: OutputOptions | None) -> OutputOptions | None:
        """The engine's output options with this job's own values in place (None: the engine's)."""
        if not self.encoding_values:
            return None
        return replace(engine or OutputOptions(), **dict(self.encoding_values))


@contextlib.contextmanager
def landmark_files(jobs: list[BatchJob], folder: Path | None = None) -> Iterator[list[BatchJob]]:
    """`jobs` with a landmark file per video in `folder`, where they stay; without a folder,
    in a temporary one removed at the end. A file names the video it was made from and is
    checked against the video's content before use, so a stale or foreign one is redone."""
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fastsync-landmarks-")))
        else:
            folder = Path(folder)
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"cannot create the landmarks folder: {exc.strerror}", folder) from None
        yield [replace(job, landmarks=folder / _landmark_name(job.video)) for job in jobs]


def _landmark_name(video: Path) -> str:
    """One name per video path (jobs list the same path again); readable, and unique by a hash."""
    where = hashlib.sha256(str(Path(video).resolve()).encode()).hexdigest()[:12]
    return f"{Path(video).stem}-{where}.json"


def read_jobs(path: Path) -> list[BatchJob]:
    path = Path(path)
    if not path.is_file():
        raise InputError("the batch file does not exist", path)
    base = path.parent
    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(path.read_text())
            if not isinstance(rows, list):
                raise ValueError("expected a JSON list of objects")
        else:
            with open(path, newline="", encoding="utf-8-sig") as f:  # Excel writes a BOM
                rows = list(csv.DictReader(f))
    except (ValueError, csv.Error) as exc:
        raise InputError(f"cannot parse the batch file: {exc}", path,
                         hint="CSV with a header video,audio,output, or a JSON list of such objects") from exc
    jobs = []
    for number, row in enumerate(rows, start=1):
        missing = [k for k in FIELDS if not isinstance(row, dict) or not row.get(k)]
        if missing:
            raise InputError(f"job {number} lacks {', '.join(missing)}", path,
                             hint="every job needs video, audio and output")
        columns = (*FIELDS, *SETTINGS, *ENCODING, FACE_NEAR)
        unknown = sorted(set(row) - set(columns))
        if unknown:
            raise InputError(f"job {number} has unknown column(s) {', '.join(map(repr, unknown))}", path,
                             hint=f"the columns are {', '.join(columns)}")
        jobs.append(BatchJob(*(base / str(row[k]).strip() for k in FIELDS), settings=_settings(row, number, path),
                             face_near=optional_point(row.get(FACE_NEAR), f"job {number}: face_near", path),
                             encoding_values=_encoding(row, number, path)))
    if not jobs:
        raise InputError("the batch file lists no jobs", path)
    return jobs


def _settings(row: dict, number: int, path: Path) -> tuple[tuple[str, int | float], ...]:
    """The job's own sampling values, checked as SamplingOptions checks them."""
    settings = {}
    for name, kind in SETTINGS.items():
        value = row.get(name)
        if value is None or str(value).strip() == "":
            continue
        try:
            parsed = kind(str(value).strip())
            if not math.isfinite(parsed):
                raise ValueError
        except ValueError:
            raise InputError(f"job {number}: {name} {value!r} is not {'an integer' if kind is int else 'a number'}",
                             path) from None
        settings[name] = parsed
    try:
        SamplingOptions(**settings)
    except ValueError as exc:
        raise InputError(f"job {number}: {exc}", path) from None
    return tuple(settings.items())


def _encoding(row: dict, number: int, path: Path) -> tuple[tuple[str, str | int], ...]:
    """The job's own output values, checked as OutputOptions checks them."""
    values = {}
    for column, name in ENCODING.items():
        value = row.get(column)
        value = "" if value is None else str(value).strip()  # a JSON crf of 0 (lossless) is a value
        if not value:
            continue
        if column == "crf":
            if not value.lstrip("-").isdigit():
                raise InputError(f"job {number}: crf {value!r} is not an integer", path)
            value = int(value)
        values[name] = value
    try:
        OutputOptions(**values)
    except FastsyncError as exc:
        raise InputError(f"job {number}: {exc}", path) from None
    return tuple(values.items())


def engine_encoding(engine) -> OutputOptions | None:
    """The engine's own output options (None for an engine without components, as tests' fakes)."""
    components = getattr(engine, "components", None)
    return None if components is None else components.options.output


def run_batch(engine, jobs: list[BatchJob], *, sampling=None, overwrite: bool = False,
              echo=print, report: BatchReport | None = None) -> tuple[int, int, int]:
    """Returns (done, skipped, failed); `report` (fastsync.batch_report) gets each job's outcome."""
    report = report or BatchReport(jobs)
    components = getattr(engine, "components", None)  # None for tests' fake engines
    device = None if components is None else str(components.device)
    encoding = engine_encoding(engine)
    for number, job in enumerate(jobs, start=1):
        prefix = f"[{number}/{len(jobs)}]"
        if job.output.exists() and not overwrite:
            echo(f"{prefix} skip: {job.output} exists (use --overwrite)")
            report.skipped(number)
            continue
        try:
            result = engine.run(job.video, job.audio, job.output, sampling=job.sampling(sampling),
                                landmarks_cache=job.landmarks, face_near=job.face_near,
                                encoding=job.encoding(encoding))
        except FastsyncError as exc:
            echo(f"{prefix} FAILED: {exc}")
            report.failed(number, str(exc), device)
            continue
        echo(f"{prefix} {result.summary()}")
        report.done(number, job_record(result), device)
    return report.finish(echo)
