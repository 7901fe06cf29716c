"""Cheap engines for the multi-device batch tests (tests/test_batch_devices.py).

The batch workers are spawned processes, so these live in a module they can import.
What a fake job does is chosen by the start of its output's name:

    fail    raises InputError: the job fails, the worker goes on
    crash   raises RuntimeError: an unexpected error, the worker stops
    die     os._exit(3) mid-job, as a segfault or the OOM killer ends a process
    hold-N  waits until N other jobs have written their outputs, then writes its own
    nested  starts a child process first (what FastOptions.host_processes does)
    other   writes its output

Each job appends "name pid" to runs.log beside its output as it starts, so a test can
count who ran what.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from fastsync.errors import CheckpointError, InputError

HOLD_DEADLINE_S = 120.0  # a held job gives up (and fails) after this: the test then fails, never hangs


def make_engine(options):
    return FakeEngine(options.device)


def broken_engine(options):
    raise CheckpointError("no weights here", Path("checkpoints") / "latentsync_unet.pt",
                          hint="run `fastsync download`")


class FakeReport:
    """A JobReport's fields that a batch keeps: the frame count is the output name's length."""

    def __init__(self, text: str, frames: int = 0):
        self.text = text
        self.frames, self.seconds = frames, 0.5
        self.frames_without_face = self.frames_with_several_faces = 0

    def summary(self) -> str:
        return self.text


class FakeEngine:
    def __init__(self, device: str):
        self.device = device

    def run(self, video, audio, output, sampling=None, landmarks_cache=None, face_near=None, encoding=None):
        output = Path(output)
        _log(output, f"{output.name} {os.getpid()}")
        if output.name.startswith("fail"):
            raise InputError("cannot read it", video)
        if output.name.startswith("crash"):
            raise RuntimeError("the fake GPU fell over")
        if output.name.startswith("die"):
            os._exit(3)
        if output.name.startswith("hold-"):
            _wait_for_outputs(output, int(output.stem.split("-")[1]))
        if output.name.startswith("nested"):
            _run_a_child()
        output.write_text(f"{self.device} {os.getpid()}")
        if landmarks_cache is not None:  # what the job was given to keep its video's landmarks in
            Path(landmarks_cache).write_text(output.name)
        if sampling is not None:  # the seed, face and encoding the job was given, beside its output
            output.with_suffix(".seed").write_text(f"{sampling.seed} {face_near} {encoding}")
        return FakeReport(f"wrote {output.name} in pid {os.getpid()}", frames=len(output.name))


def runs(folder: Path) -> list[tuple[str, int]]:
    """(output name, pid) of every job started, in the order they started."""
    path = folder / "runs.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(name, int(pid)) for name, pid in (line.split() for line in lines)]


def _log(output: Path, line: str) -> None:
    with open(output.parent / "runs.log", "a") as f:  # one short append per line: never interleaved
        f.write(line + "\n")


def _wait_for_outputs(output: Path, count: int) -> None:
    deadline = time.monotonic() + HOLD_DEADLINE_S
    while sum(1 for p in output.parent.glob("*.mp4") if p != output) < count:
        if time.monotonic() > deadline:
            raise InputError(f"the other {count} jobs did not finish while this one was held", output)
        time.sleep(0.05)


def _run_a_child() -> None:
    child = multiprocessing.get_context("forkserver").Process(target=os.getpid)
    child.start()  # a daemonic worker would raise here: daemonic processes may not have children
    child.join()
    if child.exitcode != 0:
        raise InputError(f"the nested child process ended with exit code {child.exitcode}")
