"""fastsync.spawning: worker processes started without the program's main script.

The end-to-end checks are an unguarded script's job (tests/test_host_processes.py) and
batch (tests/test_batch_devices.py), each of which runs its body once. Here: only the
processes being started that way lose the main script; every other child keeps it.
"""

from __future__ import annotations

import multiprocessing
import sys
from multiprocessing import spawn

import pytest

from fastsync import spawning

MAIN_KEYS = {"init_main_from_name", "init_main_from_path"}


@pytest.fixture
def main_script():
    main = sys.modules["__main__"]
    if getattr(main, "__spec__", None) is None and getattr(main, "__file__", None) is None:
        pytest.skip("this interpreter's main module names no script")


def test_only_the_process_being_started_loses_the_main_script(main_script, monkeypatch):
    seen = {}

    def start(self):  # what Process.start does first: ask for the child's preparation data
        seen[self.name] = spawn.get_preparation_data(self.name).keys()
        seen["someone-else"] = spawn.get_preparation_data("someone-else").keys()

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start)
    spawning.start_without_main_script(multiprocessing.get_context("spawn").Process(name="fastsync-test"))
    assert not MAIN_KEYS & seen["fastsync-test"]
    assert MAIN_KEYS & seen["someone-else"]
    assert MAIN_KEYS & spawn.get_preparation_data("fastsync-test").keys()  # once started, as before


def test_installed_once_and_cleared_when_start_fails(main_script, monkeypatch):
    def start(self):
        raise OSError("no processes left")

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start)
    with pytest.raises(OSError):
        spawning.start_without_main_script(multiprocessing.get_context("spawn").Process(name="fastsync-test"))
    wrapped = spawn.get_preparation_data
    spawning._install()
    assert spawn.get_preparation_data is wrapped  # not wrapped twice
    assert MAIN_KEYS & spawn.get_preparation_data("fastsync-test").keys()
