"""Cold start: load + compile + graph capture in a fresh process, twice.

The weights are loaded the way a user's are: from a checkpoint folder in the official
layout and formats (fp32 `latentsync_unet.pt`, OpenAI `whisper/tiny.pt`, diffusers VAE),
written here once with seeded random weights. The first process starts with an empty
compile cache; the second finds the first one's cache on disk (what a user's second run
sees). Both read the checkpoint from the page cache, as a second run would. Each child
prints one JSON line.

`--variants precompile,sequential,lazy,pycache` runs the pair once per variant, each with its
own empty cache, side by side in one run: the defaults (compiled regions kept on disk whole,
FastOptions.precompile, and compiled by worker processes side by side); the same compiled
one after another in the process (compile_workers=0); plain lazy torch.compile; the defaults
with Python's bytecode cached in a folder of its own (PYTHONPYCACHEPREFIX, with
PYTHONDONTWRITEBYTECODE unset), for images that ship packages without bytecode and forbid
writing it beside them, as the GPU image does (`bytecode_shipped` in the results); and
`tuned`, pycache's setting with inductor's timing of Triton launch configs on first launch
(fastsync.accel.compile.kernel_tuning). Each process also runs a job's chunk five times
after its warm-up (`steady_chunk_s`), so that what the kernels chosen cost shows beside
what their choosing cost. `lean` is pycache's setting in processes that cannot see the
packages a fresh `pip install fastsync` lacks but the GPU image has and diffusers imports
when present (LEAN_HIDDEN): what a user of a plain install gets. `lean_imports` is
pycache's setting with FASTSYNC_LEAN_IMPORTS=1, the command line's default: the packages
stay installed, and diffusers' import goes without them (fastsync.tools.extra_imports).

`--profile` runs a third process after each pair under cProfile and writes where its
Python time went beside `--out` (`<out stem>_<variant>_profile.txt`).
`--repeat-later N` then runs N more later processes per variant, the variants alternating,
each on its own cache: a later process varies by seconds from run to run (mostly diffusers'
import), which one pair per variant cannot tell from a difference between them.

    python -m bench.bench_cold_start --out bench/results/cold_start.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fastsync.tools.extra_imports import EXTRA, LEAN_IMPORTS_ENV


def write_checkpoints(root: Path) -> None:
    """Seeded random full-size weights in the official layout (fp32 UNet, as published)."""
    from fastsync.checkpoints import save_layout
    from fastsync.components import random_vae
    from fastsync.config import unet_config_for
    from fastsync.models.loading import random_unet
    from fastsync.models.whisper import random_whisper_encoder

    save_layout(root, random_unet(unet_config_for("1.6", "full")), random_whisper_encoder(), random_vae("full"))


VARIANTS = {"precompile": {}, "sequential": {"compile_workers": 0}, "lazy": {"precompile": False}, "pycache": {},
            "tuned": {}, "lean": {}, "lean_imports": {}}


# the modules a fast-mode process and its compile workers import, not the compiler's own
# later imports (the first process writes those)
PYCACHE_FILL = ("import torch, torch._dynamo, torch._inductor.compile_fx, diffusers, av; "
                "import fastsync.api, fastsync.accel.parallel_compile, fastsync.accel.precompile")


# variants with pycache's setting and another choice on timing Triton's launch configs
TUNING = {"tuned": "1"}
BYTECODE_VARIANTS = ("pycache", *TUNING, "lean", "lean_imports")  # run with a filled bytecode cache

# Installed on the GPU image, not by fastsync's dependencies, and imported by diffusers
# (fastsync.tools.extra_imports; bench/results/vae_import_h200.txt).
LEAN_HIDDEN = tuple(EXTRA)
_LEAN_SITE = f"""
import importlib.machinery, importlib.util, os, sys
# `import name` fails, and importlib.util.find_spec(name) is None, as for a package not installed
for _name in {LEAN_HIDDEN!r}:
    sys.modules[_name] = None
# the image's own sitecustomize, which this one shadows, still runs
_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if not (p and os.path.abspath(p) == _here)])
if _spec is not None:
    _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
"""


def lean_site(folder: Path) -> str:
    """A folder for the front of PYTHONPATH whose sitecustomize hides LEAN_HIDDEN."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_LEAN_SITE)
    return str(folder)


def variant_env(variant: str, cache_dir: str) -> dict[str, str]:
    """The child's environment: its own empty compile cache, and for `pycache` a bytecode cache."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir)
    env.pop(LEAN_IMPORTS_ENV, None)  # the Python API's default, unless the variant says otherwise
    if variant in BYTECODE_VARIANTS:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = f"{cache_dir}-bytecode"
    if variant in TUNING:
        from fastsync.accel.compile import KERNEL_TUNING_ENV

        env[KERNEL_TUNING_ENV] = TUNING[variant]
    if variant == "lean_imports":
        env[LEAN_IMPORTS_ENV] = "1"
    if variant == "lean":
        path = [lean_site(Path(f"{cache_dir}-site")), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(path)
    return env


def time_inductor_runtime() -> dict:
    """Seconds this process spends in inductor's Triton kernels before they run: compiling
    them (`precompile`) and, on a kernel's first launch, timing its configs to keep the best
    (`autotune_to_one_config`). The workers compile, but only a launch can time, so a first
    process may pay the choosing; a later one finds the choices in the cache. Counted
    around both methods of CachingAutotuner (calls nest: a parent's seconds include its
    children's)."""
    from torch._inductor.runtime import triton_heuristics

    spent: dict = {}
    for method, key in (("precompile", "precompile"), ("autotune_to_one_config", "autotune")):
        original = getattr(triton_heuristics.CachingAutotuner, method, None)
        if original is None:  # another torch: report nothing rather than guess
            continue
        spent[f"{key}_s"], spent[f"{key}_calls"] = 0.0, 0

        def timed(self, *args, _original=original, _key=key, **kwargs):
            started = time.perf_counter()
            try:
                return _original(self, *args, **kwargs)
            finally:
                spent[f"{_key}_s"] += time.perf_counter() - started
                spent[f"{_key}_calls"] += 1

        setattr(triton_heuristics.CachingAutotuner, method, timed)
    return spent


def kernel_tuning() -> dict:
    """Inductor's switches for timing launch configs, as this process has them."""
    import torch._inductor.config as inductor

    tests = getattr(inductor, "test_configs", None)
    return {"autotune_pointwise": inductor.triton.autotune_pointwise,
            "force_filter_reduction_configs": getattr(tests, "force_filter_reduction_configs", None)}


def steady_chunk_s(components, repeat: int = 5) -> list[float]:
    """A job's chunk after the warm-up: what the kernels chosen cost once all is compiled and
    captured (16 synthetic frames, all 20 denoising steps and the VAE), `repeat` times."""
    import torch

    from fastsync.accel.warmup import warm_chunk
    from fastsync.denoise import SamplingOptions

    spent = []
    for _ in range(repeat):
        started = time.perf_counter()
        warm_chunk(components, SamplingOptions(), steps=SamplingOptions().steps)
        torch.cuda.synchronize()
        spent.append(round(time.perf_counter() - started, 4))
    return spent


def ready_wall_s(entry: dict) -> float | None:
    """A child's cold start: from its start until it was ready for a job (`ready_at`), or, in
    results written before children reported that, its process wall less the job chunks it
    ran after the warm-up (`steady_chunk_s`), which a user's process does not run. None for
    a child that failed."""
    if "error" in entry:
        return None
    if "ready_at" in entry and "spawned_at" in entry:
        return round(entry["ready_at"] - entry["spawned_at"], 2)
    wall = entry.get("process_wall_s")
    return None if wall is None else round(wall - sum(entry.get("steady_chunk_s", ())), 2)


# the ratios main() reports, each where both variants ran: (variant, the one it is set against)
RATIOS = (("lazy", "precompile"), ("sequential", "precompile"), ("pycache", "precompile"),
          *((variant, "pycache") for variant in (*TUNING, "lean", "lean_imports")))


def ratios(processes: list[dict], other: str, base: str) -> dict[str, float]:
    """Variant `other`'s cold start over `base`'s, for the first and the second process."""
    walls = {(p.get("variant", "precompile"), p["name"]): ready_wall_s(p) for p in processes}
    pairs = {name: (walls.get((other, name)), walls.get((base, name))) for name in ("first_process", "second_process")}
    return {name: round(a / b, 2) for name, (a, b) in pairs.items() if a is not None and b is not None}


PROFILE_ENV = "FASTSYNC_BENCH_PROFILE"  # the child's profile goes to this file
# the files of the functions that load a compiled region: fastsync's store, dynamo's
# deserializer and guards, inductor's output code and its Triton kernels (pstats' regex)
REGION_LOAD_FUNCTIONS = ("precompile.py|aot_compile|package.py|guards.py|output_code.py|codecache.py"
                         "|async_compile.py|triton_heuristics.py|static_triton_launcher.py|pickle")


def profiled(body, path: str | None) -> None:
    """`body()`, under cProfile when `path` is set: its top functions, by cumulative and by
    own time, written to `path` (a profile inflates Python-heavy parts: compare shares)."""
    if not path:
        return body()
    import cProfile
    import io
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    try:
        return body()
    finally:
        profile.disable()
        text = io.StringIO()
        stats = pstats.Stats(profile, stream=text).strip_dirs()
        stats.sort_stats("cumulative").print_stats(120)
        stats.sort_stats("tottime").print_stats(60)
        # what loading the compiled regions costs, below the imports that lead the lists above
        stats.sort_stats("cumulative").print_stats(REGION_LOAD_FUNCTIONS, 80)
        Path(path).write_text(text.getvalue())


def child(checkpoint_dir: str, variant: str) -> None:
    profiled(lambda: _child(checkpoint_dir, variant), os.environ.get(PROFILE_ENV))


def _child(checkpoint_dir: str, variant: str) -> None:
    started = time.perf_counter()
    import torch

    torch_imported = time.perf_counter()
    from fastsync.api import LipSync
    from fastsync.denoise import SamplingOptions
    from fastsync.engine import EngineOptions, FastOptions

    imported = time.perf_counter()
    torch.cuda.init()
    inductor_runtime = time_inductor_runtime()
    cuda_ready = time.perf_counter()
    engine = LipSync.from_options(EngineOptions(checkpoint_dir=checkpoint_dir, device="cuda", mode="fast",
                                                fast=FastOptions(**VARIANTS[variant])))
    torch.cuda.synchronize()
    loaded = time.perf_counter()
    warm = engine.warm_up(SamplingOptions())
    warmed = time.perf_counter()
    ready_at = time.time()
    store = engine.components.cache.get("region_compiler")
    steady = steady_chunk_s(engine.components)
    print(json.dumps({"import_s": round(imported - started, 2), "of_which_torch_s": round(torch_imported - started, 2),
                      "cuda_init_s": round(cuda_ready - imported, 2), "load_s": round(loaded - cuda_ready, 2),
                      "compile_and_capture_s": round(warmed - loaded, 2), "total_s": round(warmed - started, 2),
                      "load_parts_s": engine.components.load_timings, "warm_up": warm,
                      "ready_at": ready_at, "steady_chunk_s": steady, "regions": store.stats.__dict__ if store is not None else None,
                      "kernel_tuning": kernel_tuning(),
                      "imported_of_lean_hidden": [m for m in LEAN_HIDDEN if sys.modules.get(m) is not None],
                      "inductor_runtime": {k: round(v, 3) for k, v in inductor_runtime.items()}}))


def _import_environment() -> dict:
    """What makes imports slower here than in a clean install: diffusers imports transformers
    whenever it is installed, and without bytecode files every module is compiled again."""
    from importlib import metadata

    try:
        transformers = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        transformers = None
    from fastsync.tools import bytecode

    return {"transformers_installed": transformers,
            "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
            "bytecode_shipped": bytecode.shipped()}


def _run(results: dict, args, name: str, variant: str, env: dict) -> dict:
    """One child, its entry added to `results` and `results` saved."""
    from bench.common import run_child, save

    entry = run_child("bench.bench_cold_start", [str(args.checkpoint_dir), variant], env)
    entry["name"], entry["variant"] = name, variant
    entry["ready_wall_s"] = ready_wall_s(entry)
    if "ready_at" in entry:  # the interpreter's start before the child's clock, and its exit
        entry["start_s"] = round(entry["ready_at"] - entry["spawned_at"] - entry["total_s"], 2)
        entry["exit_s"] = round(entry["spawned_at"] + entry["process_wall_s"] - entry["ready_at"]
                                - sum(entry.get("steady_chunk_s", ())), 2)
    results["processes"].append(entry)
    print(entry, flush=True)
    save(results, args.out)
    return entry


def later_medians(processes: list[dict]) -> dict[str, float]:
    """Each variant's median ready wall over its second and later processes."""
    import statistics

    walls: dict[str, list[float]] = {}
    for p in processes:
        if p["name"] in ("second_process", "later_process") and p.get("ready_wall_s") is not None:
            walls.setdefault(p["variant"], []).append(p["ready_wall_s"])
    return {variant: round(statistics.median(w), 2) for variant, w in walls.items()}


def main() -> None:
    from bench.common import environment, save  # not at the top: it imports torch, which the child times

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache-dir", default="/tmp/fastsync-inductor-cold")
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("/tmp/fastsync-checkpoints"))
    parser.add_argument("--variants", default="precompile", type=lambda v: v.split(","),
                        help=f"any of {', '.join(VARIANTS)}: one pair of processes each")
    parser.add_argument("--profile", action="store_true", help="a third process per variant, under cProfile")
    parser.add_argument("--repeat-later", type=int, default=0, help="more later processes per variant, alternating")
    args = parser.parse_args()
    results = {"environment": environment(), "import_environment": _import_environment(), "processes": []}
    if not (args.checkpoint_dir / "latentsync_unet.pt").is_file():
        started = time.perf_counter()
        write_checkpoints(args.checkpoint_dir)
        results["write_checkpoints_s"] = round(time.perf_counter() - started, 2)
    results["unet_checkpoint_bytes"] = (args.checkpoint_dir / "latentsync_unet.pt").stat().st_size
    for variant in args.variants:
        cache_dir = f"{args.cache_dir}-{variant}"
        env = variant_env(variant, cache_dir)
        results[f"cache_dir_empty_at_start_{variant}"] = not Path(cache_dir).exists()
        if variant in BYTECODE_VARIANTS:  # as a pip install leaves it: bytecode for what the engine imports
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", PYCACHE_FILL], env=env, check=True)
            results[f"pycache_fill_s_{variant}"] = round(time.perf_counter() - started, 2)
        names = ("first_process", "second_process", *(("profiled_process",) if args.profile else ()))
        for name in names:
            if name == "profiled_process":
                env = dict(env, **{PROFILE_ENV: str(args.out.with_name(f"{args.out.stem}_{variant}_profile.txt"))})
            _run(results, args, name, variant, env)
    for _ in range(args.repeat_later):
        for variant in args.variants:
            _run(results, args, "later_process", variant, variant_env(variant, f"{args.cache_dir}-{variant}"))
    if args.repeat_later:
        results["later_median_ready_s"] = later_medians(results["processes"])
    for other, base in RATIOS:
        if {other, base} <= set(args.variants):
            results[f"ratios_{other}_over_{base}"] = ratios(results["processes"], other, base)
    save(results, args.out)


if __name__ == "__main__":
    if "--child" in sys.argv:
        at = sys.argv.index("--child")
        child(sys.argv[at + 1], sys.argv[at + 2])
    else:
        main()
