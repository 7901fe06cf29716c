"""`fastsync batch --report FILE`: every job's outcome in a file that scripts can read.

One row per job of the batch file, in its order: the job's paths, its status (`done`,
`skipped`, `failed`, or `pending` while it waits or when the batch was stopped), the device
that ran it, its error, and for a finished job its frame count, seconds and the faces it
met. The file is rewritten whole after every job (fastsync.files), so it is readable at any
moment, and a batch stopped half-way leaves the rows it finished. `.json` gives an object
with the counts and a list of rows, `.csv` a table with one line per job.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from fastsync.errors import InputError
from fastsync.files import write_atomically

COLUMNS = ("number", "video", "audio", "output", "status", "device", "error", "frames", "seconds",
           "frames_without_face", "frames_with_several_faces")
FORMATS = (".json", ".csv")


def job_record(report) -> dict:
    """The numbers of a finished job's JobReport that a report row keeps (plain, picklable:
    a device worker sends them back)."""
    return {"frames": report.frames, "seconds": round(report.seconds, 3),
            "frames_without_face": report.frames_without_face,
            "frames_with_several_faces": report.frames_with_several_faces}


def check_report_path(path: Path) -> Path:
    """Fail before any model loads when the report could not be written at `path`."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise InputError(f"cannot write a batch report with suffix {path.suffix or '(none)'!r}", path,
                         hint="name it report.json or report.csv")
    if not path.parent.is_dir():
        raise InputError(f"the report's folder {path.parent} does not exist", path)
    return path


class BatchReport:
    """The rows of one batch; `path` None keeps them in memory only (the API's use)."""

    def __init__(self, jobs, path: Path | None = None, jobs_file: Path | None = None):
        self.path = None if path is None else check_report_path(path)
        self.jobs_file = jobs_file
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.rows = [{"number": n, "video": str(job.video), "audio": str(job.audio), "output": str(job.output),
                      "status": "pending", "device": None, "error": None}
                     for n, job in enumerate(jobs, start=1)]
        self.save()

    def skipped(self, number: int) -> None:
        self._set(number, status="skipped", error="the output exists (use --overwrite)")

    def done(self, number: int, record: dict, device: str | None = None) -> None:
        self._set(number, status="done", device=device, **record)

    def failed(self, number: int, error: str, device: str | None = None) -> None:
        self._set(number, status="failed", device=device, error=error)

    def counts(self) -> dict[str, int]:
        statuses = [row["status"] for row in self.rows]
        return {s: statuses.count(s) for s in ("done", "skipped", "failed", "pending")}

    def finish(self, echo) -> tuple[int, int, int]:
        """The batch's closing line through `echo`; returns (done, skipped, failed)."""
        c = self.counts()
        echo(f"batch: {c['done']} done, {c['skipped']} skipped, {c['failed']} failed")
        return c["done"], c["skipped"], c["failed"]

    def _set(self, number: int, **values) -> None:
        self.rows[number - 1].update(values)
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        write_atomically(self.path, self._csv() if self.path.suffix.lower() == ".csv" else self._json())

    def _json(self) -> str:
        return json.dumps({"jobs_file": None if self.jobs_file is None else str(self.jobs_file),
                           "started": self.started, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "counts": self.counts(), "jobs": self.rows}, indent=1)

    def _csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in COLUMNS})
        return out.getvalue()
