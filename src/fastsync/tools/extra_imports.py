"""Packages that diffusers imports whenever they are installed, which fastsync never uses.

diffusers' VAE module imports its single-file loaders, and those import HF transformers
(which imports scikit-learn) when it is installed; its schedulers import scipy, its LoRA
loaders PEFT (which imports transformers), and its models Flax unless USE_FLAX says no
(fastsync.components.DIFFUSERS_ENV). A plain `pip install fastsync` installs none of them.
On the benchmarks' H200 image, which has them all, a later fast-mode process was ready
after 19.1-21.7 s; with them hidden from its processes, 11.7-11.9 s, its VAE stage 1.3-2.1 s
against 6.0-8.3 s (bench/results/cold_start_h200_lean.json against cold_start_h200_later.json
and cold_start_h200_lean_failed.json: other machines of the same kind, not side by side).
`hidden()` makes them look uninstalled while diffusers imports (components.import_diffusers,
with FASTSYNC_LEAN_IMPORTS=1: the command line's default, whose process is fastsync's own).
The Python API leaves them visible unless asked, as a user's code in the same process may
need them; once diffusers is imported they import as before either way.
"""

from __future__ import annotations

import contextlib
import sys

# "1": diffusers is imported while these look uninstalled; the command line sets it unless
# the user did (kept here, not in fastsync.components, so the command line stays light)
LEAN_IMPORTS_ENV = "FASTSYNC_LEAN_IMPORTS"

# import names, with what to call them in a message
EXTRA = {"transformers": "transformers", "sklearn": "scikit-learn", "scipy": "scipy", "peft": "peft",
         "jax": "jax", "flax": "flax"}


def imported() -> list[str]:
    """The EXTRA packages this process has imported, by their distribution names."""
    return [label for name, label in EXTRA.items() if sys.modules.get(name) is not None]


@contextlib.contextmanager
def hidden(names: tuple[str, ...] = tuple(EXTRA)):
    """Inside, `import name` fails and importlib.util.find_spec(name) is None for each of
    `names` not imported yet, as for a package not installed: a None entry in sys.modules is
    the import system's way to say so. On the way out those entries go, so later imports of
    them work as before."""
    blocked = [name for name in names if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None
    try:
        yield blocked
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def hint() -> str | None:
    """For `fastsync warmup`, after the models loaded: None unless diffusers pulled some in."""
    found = imported()
    if not found:
        return None
    return (f"diffusers imported {', '.join(found)}, installed here, which fastsync does not use: seconds of every "
            "process's start (a later process on an H200 was ready in about 12 s without them, 19-22 s with them). "
            "FASTSYNC_LEAN_IMPORTS=1 (the command line's default) keeps them out of diffusers' import, and a "
            "virtual environment with only fastsync's dependencies does not have them")
