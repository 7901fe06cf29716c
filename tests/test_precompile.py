"""Regions compiled ahead of time and kept on disk (fastsync.accel.precompile), on the CPU.

Inductor compiles CPU regions to C++, so these tests need a C++ compiler; each compile of a
tiny ResNet block takes seconds, so one module-scoped run makes every compile and the tests
check its parts. Compiled and eager fp32 on the CPU agree to float rounding: the bound is
1e-5 of the output's scale, and a block with other weights is off by far more (checked).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fastsync.accel import precompile
from fastsync.accel.compile import compile_regions, eager_context
from fastsync.models.resnet import ResnetBlock

pytestmark = [
    pytest.mark.skipif(not precompile.supported(), reason="this torch cannot compile ahead of time"),
    pytest.mark.skipif(shutil.which("g++") is None, reason="inductor needs a C++ compiler on the CPU"),
]

TOLERANCE = 1e-5
SRC = Path(__file__).resolve().parents[1] / "src"


def block(seed: int, channels: int = 16, scale: float = 1.0) -> ResnetBlock:
    torch.manual_seed(seed)
    return ResnetBlock(channels, channels, 32, groups=4, eps=1e-5, output_scale_factor=scale).eval().requires_grad_(False)


def inputs(channels: int = 16, frames: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(1, channels, frames, 8, 8, generator=g), torch.randn(1, 32, generator=g)


def plain(module, *args):
    return type(module).forward(module, *args)


def rel_err(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Four blocks through one compiler: two alike, one wider, one with another scale."""
    directory = tmp_path_factory.mktemp("regions")
    compiler = precompile.RegionCompiler(directory)
    blocks = {"a": block(0), "b": block(1), "wide": block(2, channels=24), "scaled": block(3, scale=2.0)}
    for m in blocks.values():
        compiler.install(m)
    out = {}
    with torch.no_grad():
        for name, m in blocks.items():
            args = inputs(24 if name == "wide" else 16)
            out[name] = (m(*args), plain(m, *args))
    return directory, compiler, blocks, out


def test_compiled_regions_equal_eager(run):
    _, _, blocks, out = run
    for name, (compiled, eager) in out.items():
        assert rel_err(compiled, eager) < TOLERANCE, name
    # the bound can fail: another block's weights are far outside it
    assert rel_err(out["a"][0], out["b"][1]) > 100 * TOLERANCE


def test_same_shapes_share_one_compiled_function(run):
    directory, compiler, _, _ = run
    # a and b share a key and a function; the wider block has its own key; the scaled one
    # shares a's key but fails its guard (the scale is a constant in the graph): a variant.
    assert compiler.stats.compiled == 3
    assert len(compiler.functions) == 2
    assert sorted(len(v) for v in compiler.functions.values()) == [1, 2]
    assert len(list(directory.glob("*.bin"))) == 2
    assert not list(directory.glob("*.partial"))


def test_eager_context_runs_plain_modules(run):
    _, compiler, blocks, _ = run
    before = compiler.stats.compiled
    args = inputs(frames=3)  # a shape that would otherwise compile
    with torch.no_grad(), eager_context():
        assert torch.equal(blocks["a"](*args), plain(blocks["a"], *args))
    assert compiler.stats.compiled == before


def test_a_second_process_loads_without_compiling(run):
    """Fresh blocks of the same shapes (other weights) in a new process: nothing is traced."""
    directory = run[0]
    script = textwrap.dedent(f"""
        import json, torch, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_precompile import block, inputs, plain, rel_err
        from fastsync.accel import precompile
        compiler = precompile.RegionCompiler({str(directory)!r})
        errors = []
        with torch.no_grad():
            for m, channels in ((block(10), 16), (block(11, channels=24), 24), (block(12, scale=2.0), 16)):
                compiler.install(m)
                args = inputs(channels)
                errors.append(rel_err(m(*args), plain(m, *args)))
        s = compiler.stats
        print(json.dumps({{"errors": errors, "compiled": s.compiled, "loaded": s.loaded}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *sys.path])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["compiled"] == 0
    assert result["loaded"] == 3  # two keys' files, one holding two variants
    assert max(result["errors"]) < TOLERANCE


def test_a_damaged_file_is_ignored_and_replaced(run, tmp_path, caplog):
    directory, compiler, _, _ = run
    target = tmp_path / "regions"
    shutil.copytree(directory, target)
    for path in target.glob("*.bin"):
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # a torn write
    fresh = precompile.RegionCompiler(target)
    m = block(20, channels=24)
    fresh.install(m)
    args = inputs(24)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="fastsync.accel.precompile"):
        assert rel_err(m(*args), plain(m, *args)) < TOLERANCE
    assert fresh.stats.rejected_files == 1 and fresh.stats.compiled == 1
    assert "ignoring precompiled region" in caplog.text
    reread = precompile.RegionCompiler(target)
    assert len(reread._read(precompile._call_key(m, args, {}))) == 1  # the file was rewritten whole


def test_an_unwritable_cache_only_warns(tmp_path, caplog):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache folder should be")
    compiler = precompile.RegionCompiler(blocked)
    m = block(30)
    compiler.install(m)
    args = inputs()
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="fastsync.accel.precompile"):
        assert rel_err(m(*args), plain(m, *args)) < TOLERANCE  # the job goes on with the compiled block
    assert compiler.stats.compiled == 1
    assert "the next process compiles it again" in caplog.text
    assert list(tmp_path.iterdir()) == [blocked]  # no partial file left behind


def test_a_failed_ahead_of_time_compile_falls_back_to_torch_compile(tmp_path, caplog, monkeypatch):
    compiler = precompile.RegionCompiler(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("aot_compile is broken in this torch")

    monkeypatch.setattr(compiler, "_compile", broken)
    m = block(40)
    compiler.install(m)
    args = inputs()
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="fastsync.accel.precompile"):
        for _ in range(2):  # the second call reuses the lazily compiled function
            assert rel_err(m(*args), plain(m, *args)) < TOLERANCE
    assert caplog.text.count("could not compile ResnetBlock ahead of time") == 1
    assert len(compiler.lazy) == 1 and not list(tmp_path.iterdir())


def test_changed_model_code_compiles_again(run, tmp_path, monkeypatch):
    """Guards do not see source code: the key holds a digest of it, so an upgrade that changes
    a block's forward does not run the old graph."""
    directory = tmp_path / "regions"
    shutil.copytree(run[0], directory)
    monkeypatch.setattr(precompile, "_code_key", lambda: "models0000-after-an-upgrade")
    fresh = precompile.RegionCompiler(directory)
    m = block(50)
    fresh.install(m)
    args = inputs()
    with torch.no_grad():
        assert rel_err(m(*args), plain(m, *args)) < TOLERANCE
    assert fresh.stats.loaded == 0 and fresh.stats.compiled == 1


def test_the_source_digest_follows_every_file(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "b.py").write_text("y = 2\n")
    files = sorted((tmp_path / "pkg").glob("*.py"))
    before = precompile.source_digest(files, tmp_path)
    (tmp_path / "pkg" / "b.py").write_text("y = 3\n")
    assert precompile.source_digest(files, tmp_path) != before
    assert "models" in precompile._code_key() and "diffusers" in precompile._code_key()


def test_a_class_swapped_inside_a_region_changes_its_key():
    """Fast set-up swaps norms inside regions in place (accel.group_norm): a region kept
    with the other norms must not be loaded for it."""
    import copy

    from fastsync.accel import group_norm

    plain = block(50)
    swapped = copy.deepcopy(plain)
    assert group_norm.use_in(swapped) > 0
    assert precompile._module_key(plain) != precompile._module_key(swapped)
    assert precompile._module_key(block(50)) == precompile._module_key(plain)  # the same classes again


def test_compile_regions_installs_the_store_on_every_region(tmp_path):
    from fastsync.accel.compile import REGIONS
    from fastsync.config import unet_config_for
    from fastsync.models.loading import random_unet

    unet = random_unet(unet_config_for("1.6", "tiny"))
    store = precompile.RegionCompiler(tmp_path)
    regions = [m for m in unet.modules() if isinstance(m, REGIONS)]
    assert compile_regions(unet, store=store) == len(regions) > 0
    assert all("forward" in m.__dict__ for m in regions)  # routed through the store, lazily:
    assert store.stats.compiled == 0 and not store.functions  # nothing compiles before a call
