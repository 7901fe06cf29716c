"""`fastsync batch JOBS`: many lip-sync jobs with the models loaded once.

JOBS is a CSV file with a header `video,audio,output` (paths relative to the CSV's
folder) or a JSON list of {"video", "audio", "output"} objects. A failing job is
reported and skipped — its output is never half-written — and the others go on; the
exit status says whether all succeeded. A job whose output already exists is skipped
unless --overwrite is given, so an interrupted batch can simply be run again. With
--devices, fastsync.batch_devices runs the jobs on several devices by the same rules.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from fastsync.errors import FastsyncError, InputError

FIELDS = ("video", "audio", "output")


@dataclass(frozen=True)
class BatchJob:
    video: Path
    audio: Path
    output: Path


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
            with open(path, newline="") as f:
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
        jobs.append(BatchJob(*(base / str(row[k]).strip() for k in FIELDS)))
    if not jobs:
        raise InputError("the batch file lists no jobs", path)
    return jobs


def run_batch(engine, jobs: list[BatchJob], *, sampling=None, overwrite: bool = False,
              echo=print) -> tuple[int, int, int]:
    """Returns (done, skipped, failed)."""
    done = skipped = failed = 0
    for number, job in enumerate(jobs, start=1):
        prefix = f"[{number}/{len(jobs)}]"
        if job.output.exists() and not overwrite:
            echo(f"{prefix} skip: {job.output} exists (use --overwrite)")
            skipped += 1
            continue
        try:
            report = engine.run(job.video, job.audio, job.output, sampling=sampling)
        except FastsyncError as exc:
            echo(f"{prefix} FAILED: {exc}")
            failed += 1
            continue
        echo(f"{prefix} {report.summary()}")
        done += 1
    echo(f"batch: {done} done, {skipped} skipped, {failed} failed")
    return done, skipped, failed
