"""Timing of Triton launch configs on a kernel's first launch (fastsync.accel.compile.kernel_tuning).

fastsync turns inductor's timing off unless FASTSYNC_KERNEL_TUNING=1. Inductor's switches
are process-wide, so each check runs in a fresh process. On a GPU, a compiled norm and
activation shows whether its kernels were timed when first launched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastsync.accel import precompile
from fastsync.accel.compile import KERNEL_TUNING_ENV, _first_config_wins
from fastsync.models.resnet import ResnetBlock

SRC = Path(__file__).resolve().parents[1] / "src"

SWITCHES = """
import json
from fastsync.accel.compile import configure_inductor
configure_inductor()
import torch._inductor.config as inductor
from torch._inductor.runtime.triton_heuristics import CachingAutotuner
from fastsync.accel import compile
print(json.dumps({"pointwise": inductor.triton.autotune_pointwise,
                  "filter": inductor.test_configs.force_filter_reduction_configs,
                  "pinned": CachingAutotuner.benchmark_all_configs is compile._first_config_wins}))
"""

# a GroupNorm and SiLU compiled alone: inductor makes a reduction and pointwise kernels
# with several launch configs each; counts the calls that time them
TIMED_ON_LAUNCH = """
import json, torch
from fastsync.accel.compile import configure_inductor
configure_inductor()
from torch._inductor.runtime import triton_heuristics
timed = []
original = triton_heuristics.CachingAutotuner.autotune_to_one_config
def counting(self, *args, **kwargs):
    timed.append(self.fn.__name__)
    return original(self, *args, **kwargs)
triton_heuristics.CachingAutotuner.autotune_to_one_config = counting
norm = torch.nn.GroupNorm(8, 64).cuda()
fn = torch.compile(lambda x: torch.nn.functional.silu(norm(x)), fullgraph=True)
x = torch.randn(4, 64, 32, 32, device="cuda")
with torch.no_grad():
    error = (fn(x) - torch.nn.functional.silu(norm(x))).abs().max().item()
print(json.dumps({"timed": len(timed), "error": error}))
"""


def _run(script: str, tmp_path: Path, tuning: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != KERNEL_TUNING_ENV}
    env |= {"PYTHONPATH": str(SRC), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{tuning}")}
    if tuning is not None:
        env[KERNEL_TUNING_ENV] = tuning
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_timing_is_off_by_default_and_on_when_asked(tmp_path):
    untuned = {"pointwise": False, "filter": True, "pinned": True}
    assert _run(SWITCHES, tmp_path, None) == untuned
    assert _run(SWITCHES, tmp_path, "0") == untuned
    # inductor's own defaults
    assert _run(SWITCHES, tmp_path, "1") == {"pointwise": True, "filter": False, "pinned": False}


def test_a_pinned_kernel_keeps_its_first_config():
    """Where a kernel still has several launch configs, inductor keeps the one of least
    "timing"; the pinned stand-in ranks them in their order, without launching any."""
    class Tuner:
        launchers = ["first", "second", "third"]

    timings = _first_config_wins(Tuner(), "args are not read")
    assert min(timings, key=timings.get) == "first"
    assert sorted(timings) == sorted(Tuner.launchers)


def test_a_region_compiled_with_the_other_setting_is_not_loaded(monkeypatch):
    """The setting is part of a stored region's key."""
    def key() -> str:
        return precompile._module_key(ResnetBlock(8, 8, 16, groups=4, eps=1e-5, output_scale_factor=1.0))

    monkeypatch.delenv(KERNEL_TUNING_ENV, raising=False)
    untuned = key()
    monkeypatch.setenv(KERNEL_TUNING_ENV, "1")
    tuned = key()
    assert untuned != tuned
    assert untuned.replace("untuned", "tuned") == tuned


@pytest.mark.requires_cuda
def test_untuned_kernels_are_not_timed_and_compute_the_same(tmp_path):
    assert torch.cuda.is_available()
    untuned = _run(TIMED_ON_LAUNCH, tmp_path, None)
    tuned = _run(TIMED_ON_LAUNCH, tmp_path, "1")
    assert untuned["timed"] == 0
    assert tuned["timed"] > 0  # the check can see timing where inductor does it
    assert untuned["error"] < 1e-4 and tuned["error"] < 1e-4  # fp32, against eager
