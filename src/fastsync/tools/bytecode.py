"""Whether Python has bytecode for fast mode's heavy imports, and what to do when it has none.

Some images ship packages without `.pyc` files and set PYTHONDONTWRITEBYTECODE=1 (the GPU
image of our benchmarks does, for torch, torch._dynamo, torch._inductor and sympy). Every
process, each compile worker among them, then compiles those modules' source again. On
the CPU, fast mode's import chain took 13.8 s that way against 4.1 s from a bytecode cache
(bench/results/import_bytecode_cpu.json). A cache folder of its own fixes it without
writing beside the installed files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGES = ("torch", "torch._dynamo", "torch._inductor", "sympy", "diffusers", "transformers", "av")
_HEAVY = ("torch", "torch._dynamo", "torch._inductor")


def shipped(packages: tuple[str, ...] = PACKAGES) -> dict[str, bool | None]:
    """Whether each package's __init__ has a bytecode file where this interpreter looks for
    it (PYTHONPYCACHEPREFIX included); None: not installed."""
    found: dict[str, bool | None] = {}
    for name in packages:
        spec = importlib.util.find_spec(name)
        found[name] = None if spec is None or not spec.origin else \
            Path(importlib.util.cache_from_source(spec.origin)).is_file()
    return found


def missing_hint() -> str | None:
    """After the heavy packages were imported: a hint if Python still has no bytecode for
    them, i.e. it neither found any nor could write it; else None."""
    missing = [name for name, ok in shipped(_HEAVY).items() if ok is False]
    if not missing:
        return None
    return (f"Python has no bytecode for {', '.join(missing)} here, so every process compiles their source "
            "again (seconds per process). Set PYTHONPYCACHEPREFIX to a writable folder and unset "
            "PYTHONDONTWRITEBYTECODE, e.g. PYTHONPYCACHEPREFIX=~/.cache/fastsync/bytecode")
