"""Import time of fastsync's entry points, each in a fresh interpreter (median of --repeat).

Each case records its wall time (time.perf_counter() around the statement, in the child),
which heavy modules it left in sys.modules, and its largest packages by cumulative time
from one `python -X importtime` run. With --before REF it also measures that commit,
exported with `git archive`; the runs of both trees alternate, so that a background load
on the machine weighs on both alike.

    python -m bench.bench_import --before 23f3fc7 --out bench/results/import_cpu.json

With --bytecode it asks instead what bytecode files are worth: the heavy import chain of
fast mode (torch, torch._dynamo, torch._inductor, diffusers) runs as this machine has it,
with no bytecode (an empty `-X pycache_prefix` and PYTHONDONTWRITEBYTECODE=1: every module
compiled from source) and with a bytecode cache filled by one earlier run. It also records
whether each package ships bytecode for this interpreter. The GPU image sets
PYTHONDONTWRITEBYTECODE=1, so a missing bytecode file there is compiled again in every process.

    python -m bench.bench_import --bytecode --out bench/results/import_bytecode.json

With --flax it times diffusers' VAE import (`import torch, diffusers; diffusers.AutoencoderKL`)
in a filled bytecode cache, alternating USE_FLAX unset (diffusers imports Flax if jax and flax
are installed) and USE_FLAX=0 (what fastsync sets). Only a machine with jax and flax differs.

    python -m bench.bench_import --flax --out bench/results/import_flax.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from bench.common import environment, save

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torch._dynamo", "torch._inductor", "sympy", "diffusers", "diffusers.models", "cv2", "av")
LOAD_PATH = "import fastsync.engine, fastsync.components, fastsync.models.loading, fastsync.models.whisper, " \
            "fastsync.face.mask"
_HELP = "import contextlib, io\nfrom fastsync.cli import main\nwith contextlib.redirect_stdout(io.StringIO()):\n" \
        "    try:\n        main({argv!r})\n    except SystemExit:\n        pass"
CASES = {
    "torch": "import torch",
    "fastsync.cli": "import fastsync.cli",
    "fastsync --help": _HELP.format(argv=["--help"]),
    "fastsync run --help": _HELP.format(argv=["run", "--help"]),
    "fastsync.components": "import fastsync.components",
    "fastsync.api": "import fastsync.api",
    # What load_components imports at its top; since the change it no longer includes diffusers.
    "load_components imports": LOAD_PATH,
    # The whole path to a loaded engine (tiny random models, CPU): diffusers is imported in here
    # either way, so this shows where the import time went rather than that it vanished.
    "fastsync.api + LipSync.load (tiny, cpu, reference)":
        "from fastsync.api import LipSync\n"
        "LipSync.load(random_weights=True, model_size='tiny', device='cpu', mode='reference')",
}
_CHILD = "import time\n_t = time.perf_counter()\n{code}\n_s = time.perf_counter() - _t\n" \
         "import json, sys\nprint(json.dumps({{'s': _s, 'loaded': [m for m in {heavy!r} if m in sys.modules]}}))"


def _child_env(src: Path) -> dict:
    """The caller's environment with `src` first on the path; the caller's own path stays
    after it (where a GPU image's carried wheels are, diffusers among them)."""
    kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(ROOT), *kept]))
    env.pop("PYTHONSTARTUP", None)
    return env


def time_once(code: str, src: Path) -> dict:
    script = _CHILD.format(code=code, heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", script], env=_child_env(src), capture_output=True, text=True,
                          check=True, cwd=tempfile.gettempdir())
    return json.loads(done.stdout.strip().splitlines()[-1])


def top_packages(code: str, src: Path, n: int = 6) -> dict[str, float]:
    """Top-level packages by the cumulative ms of their outermost import, plus torch._dynamo."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=_child_env(src),
                          capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
    by_package: dict[str, int] = {}
    for line in done.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[1].strip().isdigit():
            continue  # the header line, or the child's own output
        name, cumulative_us = fields[2].strip(), int(fields[1])
        key = name if name == "torch._dynamo" else name.split(".")[0]
        by_package[key] = max(by_package.get(key, 0), cumulative_us)
    by_package.pop("fastsync", None)  # the root of every case: it holds everything else
    top = sorted(by_package.items(), key=lambda kv: -kv[1])[:n]
    if "torch._dynamo" in by_package:
        top.append(("torch._dynamo", by_package["torch._dynamo"]))
    return {name: round(us / 1e3, 1) for name, us in dict(top).items()}


def export_commit(ref: str, into: Path) -> Path:
    """`git archive REF src` unpacked under `into`; returns its src folder."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True)
    tar_path = into / "src.tar"
    tar_path.write_bytes(archive.stdout)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def describe_tree() -> str:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"], capture_output=True,
                           text=True, check=True).stdout.strip()
    return head + (" + uncommitted changes in src" if dirty else "")


def measure(trees: dict[str, Path], repeat: int) -> dict:
    runs = {case: {label: [] for label in trees} for case in CASES}
    for _ in range(repeat):
        for case, code in CASES.items():
            for label, src in trees.items():
                runs[case][label].append(time_once(code, src))
                print(f"{case:55s} {label:6s} {runs[case][label][-1]['s']:.3f} s", flush=True)
    results = {}
    for case, code in CASES.items():
        results[case] = {"code": code}
        for label, src in trees.items():
            seconds = [r["s"] for r in runs[case][label]]
            results[case][label] = {"median_s": round(statistics.median(seconds), 3),
                                    "runs_s": [round(s, 3) for s in seconds],
                                    "heavy_modules_loaded": runs[case][label][-1]["loaded"],
                                    "importtime_top_cumulative_ms": top_packages(code, src)}
    return results


HEAVY_CHAIN = "import torch, torch._dynamo, torch._inductor.compile_fx, diffusers"


def _time_chain(extra_args: list[str], env_extra: dict, code: str = HEAVY_CHAIN) -> float:
    """Seconds for `code` in a fresh child; an env_extra value of None removes that variable."""
    script = _CHILD.format(code=code, heavy=HEAVY)
    env = {k: v for k, v in dict(_child_env(ROOT / "src"), **env_extra).items() if v is not None}
    done = subprocess.run([sys.executable, *extra_args, "-c", script], env=env, capture_output=True, text=True,
                          cwd=tempfile.gettempdir())
    if done.returncode:
        raise RuntimeError(f"the timed import failed ({code!r}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["s"]


def measure_bytecode(repeat: int) -> dict:
    from fastsync.tools import bytecode

    with tempfile.TemporaryDirectory() as empty_root, tempfile.TemporaryDirectory() as filled:
        _time_chain(["-X", f"pycache_prefix={filled}"], {"PYTHONDONTWRITEBYTECODE": ""})  # fills it
        settings = {
            "as_installed": ([], {}),
            "no_bytecode": (None, {"PYTHONDONTWRITEBYTECODE": "1"}),
            "bytecode_cache": (["-X", f"pycache_prefix={filled}"], {"PYTHONDONTWRITEBYTECODE": "1"}),
        }
        runs: dict[str, list[float]] = {name: [] for name in settings}
        for i in range(repeat):
            for name, (args, env_extra) in settings.items():
                if args is None:  # a fresh empty prefix each time: nothing to read, nothing written
                    args = ["-X", f"pycache_prefix={Path(empty_root) / str(i)}"]
                runs[name].append(_time_chain(args, env_extra))
                print(f"{name:15s} {runs[name][-1]:.2f} s", flush=True)
    return {"code": HEAVY_CHAIN, "bytecode_shipped": bytecode.shipped(),
            "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
            **{name: {"median_s": round(statistics.median(r), 3), "runs_s": [round(x, 3) for x in r]}
               for name, r in runs.items()}}


VAE_CHAIN = "import torch, diffusers\ndiffusers.AutoencoderKL"


def measure_flax(repeat: int) -> dict:
    import importlib.util

    with tempfile.TemporaryDirectory() as filled:
        args = ["-X", f"pycache_prefix={filled}"]
        _time_chain(args, {"USE_FLAX": None, "PYTHONDONTWRITEBYTECODE": ""}, VAE_CHAIN)  # fills it
        settings = {"USE_FLAX unset": {"USE_FLAX": None}, "USE_FLAX=0": {"USE_FLAX": "0"}}
        runs: dict[str, list[float]] = {name: [] for name in settings}
        for _ in range(repeat):
            for name, env_extra in settings.items():
                runs[name].append(_time_chain(args, {**env_extra, "PYTHONDONTWRITEBYTECODE": "1"}, VAE_CHAIN))
                print(f"{name:15s} {runs[name][-1]:.2f} s", flush=True)
    medians = {name: statistics.median(r) for name, r in runs.items()}
    return {"code": VAE_CHAIN,
            "flax_installed": all(importlib.util.find_spec(m) is not None for m in ("jax", "flax")),
            **{name: {"median_s": round(medians[name], 3), "runs_s": [round(x, 3) for x in r]}
               for name, r in runs.items()},
            "unset_over_off": round(medians["USE_FLAX unset"] / medians["USE_FLAX=0"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="a commit to measure beside this checkout's src")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bytecode", action="store_true", help="measure bytecode files instead (see above)")
    parser.add_argument("--flax", action="store_true", help="measure diffusers' import with and without Flax")
    parser.add_argument("--note", default="", help="free text stored in the JSON (machine, caveats)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/import.json"))
    args = parser.parse_args()
    if args.bytecode:
        save({"environment": environment(), "note": args.note, "repeat": args.repeat,
              "bytecode": measure_bytecode(args.repeat)}, args.out)
        print(f"wrote {args.out}")
        return
    if args.flax:
        save({"environment": environment(), "note": args.note, "repeat": args.repeat,
              "flax": measure_flax(args.repeat)}, args.out)
        print(f"wrote {args.out}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": export_commit(args.before, Path(tmp))} if args.before else {}
        trees["after"] = ROOT / "src"
        env = environment()
        results = {"environment": env, "measured_on": "cuda machine" if "gpu" in env else "cpu only",
                   "note": args.note, "repeat": args.repeat,
                   "trees": {"before": args.before, "after": describe_tree()},
                   "cases": measure(trees, args.repeat)}
    save(results, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
