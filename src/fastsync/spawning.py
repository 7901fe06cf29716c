"""Start a worker process without running the program's main script in it.

multiprocessing runs the main script again in every child it spawns or forks from its
server, so that functions defined there can be unpickled. fastsync's workers (the host
stages, the batch's device workers) run fastsync's own functions on fastsync's own
arguments and need nothing from it; and a script without the `if __name__ == "__main__":`
guard would run its job again in each worker, or fail there as multiprocessing forbids a
child to start processes while it imports its main module.

Why by hand: multiprocessing has no switch for this. While `start_without_main_script`
starts a process, the data multiprocessing prepares for that process name leaves the main
script out. Every other process, of fastsync or of the program, is prepared as before.
"""

from __future__ import annotations

import collections
import threading
from multiprocessing import spawn

_MAIN_KEYS = ("init_main_from_name", "init_main_from_path")
_starting: collections.Counter = collections.Counter()  # names being started without the main script
_lock = threading.Lock()


def _install() -> None:
    if getattr(spawn.get_preparation_data, "fastsync_leaves_out_main", False):
        return
    original = spawn.get_preparation_data

    def get_preparation_data(name):
        data = original(name)
        if _starting[name] > 0:
            for key in _MAIN_KEYS:
                data.pop(key, None)
        return data

    get_preparation_data.fastsync_leaves_out_main = True
    spawn.get_preparation_data = get_preparation_data


def start_without_main_script(process) -> None:
    """`process.start()`, its child not running the main script: its target and arguments
    must be importable from modules other than `__main__`."""
    with _lock:
        _install()
        _starting[process.name] += 1
    try:
        process.start()  # multiprocessing prepares the child's data here, synchronously
    finally:
        with _lock:
            _starting[process.name] -= 1

