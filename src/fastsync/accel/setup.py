"""Apply fast mode's model-level switches once, at load time.

Each switch is in `FastOptions` and each has a test showing the switched path equals
the plain one within a stated tolerance (tests/test_accel_*.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from fastsync.engine import Components
from fastsync.errors import FastsyncError


def prepare_fast(c: Components) -> dict[str, float]:
    """channels_last weights; regional compile on CUDA. Returns seconds spent, by name."""
    fast = c.options.fast
    spent: dict[str, float] = {}
    if fast.cudnn_benchmark and c.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if fast.cpu_threads and c.device.type == "cuda":
        set_cpu_threads(fast.cpu_threads)
    backend = motion_attention_backend(fast.motion_attention, c.device)
    if backend:
        from fastsync.models.motion_module import TemporalSelfAttention

        for module in c.unet.modules():
            if isinstance(module, TemporalSelfAttention):
                module.backend = backend
    if fast.host_processes_on(c.device):
        from fastsync.host_processes import warm_up

        warm_up()  # the fork server imports the host modules while the weights load
    if fast.channels_last:
        c.unet.to(memory_format=torch.channels_last)
        if c.device.type == "cuda":
            keep_channels_last_between_blocks(c.unet)
        c.vae.to(memory_format=torch.channels_last)
    if fast.compile and c.device.type == "cuda":
        from fastsync.accel.compile import compile_vae_regions, vae_regions

        started = time.perf_counter()
        swap_in_unet_regions(c.unet, fast)
        if fast.column_group_norm:
            from fastsync.accel import group_norm

            group_norm.use_in_regions(c.vae, vae_regions())
        store = region_compiler(c) if fast.precompile else None
        compile_unet(c.unet, fast, store=store)  # lazy: the compilation itself happens on the first call
        compile_vae_regions(c.vae, store=store)
        spent["compile_setup_s"] = time.perf_counter() - started
    return spent


def swap_in_unet_regions(unet, fast) -> None:
    """The layers inside the UNet's compiled regions that `fast` (FastOptions) computes another
    way: the norms from per-channel moments, the linear layers' bias in their consumer's
    kernel. Both pay only compiled, so fast set-up calls this where it compiles. With
    fast.compile_glue the head is attached as a module (fastsync.accel.glue), and its norm
    is swapped with the regions' ones."""
    from fastsync.accel.compile import REGIONS
    from fastsync.accel.glue import glue_modules

    glue = glue_modules(unet) if fast.compile_glue else []  # attaches the head
    if fast.column_group_norm:
        from fastsync.accel import group_norm

        group_norm.use_in_regions(unet, REGIONS)
        for module in glue:
            group_norm.use_in(module)
    if fast.split_linear_bias:
        from fastsync.accel import linear_bias

        linear_bias.use_in_regions(unet, REGIONS)


def compile_unet(unet, fast, *, store=None, mode: str | None = None) -> int:
    """The UNet's compiled regions as `fast` (FastOptions) has them: the repeated blocks, and
    with compile_glue the layers between them; returns how many (lazily compiled, see
    accel.compile.compile_regions). After swap_in_unet_regions."""
    from fastsync.accel.compile import compile_glue, compile_regions

    count = compile_regions(unet, store=store, mode=mode)
    if fast.compile_glue:
        count += compile_glue(unet, store=store, mode=mode)
    return count


def keep_channels_last_between_blocks(unet) -> int:
    """Motion modules return their input's layout (tests/test_layouts.py); returns how many.

    Not for the forward's speed (on the H200: 99.9 ms with it, 99.7 ms without), but for
    the compiled regions: with every block taking and returning channels_last_3d, the
    warm-up compiles 35 region variants instead of 41, and a later process loads 35
    (bench/results/cold_start_h200_parallel.json against cold_start_h200_timeline.json)."""
    from fastsync.models.motion_module import TemporalTransformer

    modules = [m for m in unet.modules() if isinstance(m, TemporalTransformer)]
    for module in modules:
        module.keep_input_layout = True
    return len(modules)


def prestart_compile_workers(fast, device: torch.device) -> list | None:
    """The warm-up's compile workers, started before the weights load where nothing compiled
    is on disk yet (a first process), so that their start overlaps the load; else None."""
    from fastsync.accel import parallel_compile, precompile
    from fastsync.accel.compile import regions_dir

    workers = parallel_compile.worker_count(fast.compile_workers)
    if device.type != "cuda" or not (fast.compile and fast.precompile and workers >= 2 and precompile.supported()):
        return None
    if any(Path(regions_dir()).glob("*.bin")):  # a later process: its regions are most likely there
        return None
    return parallel_compile.start_workers(workers)


def region_compiler(c: Components):
    """The engine's RegionCompiler (kept on the components for its statistics), or None
    where this torch cannot compile ahead of time."""
    from fastsync.accel import precompile
    from fastsync.accel.compile import regions_dir

    if not precompile.supported():
        return None
    return c.cache.setdefault("region_compiler", precompile.RegionCompiler(regions_dir()))


def motion_attention_backend(name: str, device: torch.device) -> str:
    """The temporal attention backend to set ("" = leave the model's default).

    The Triton kernel is CUDA-only, like compilation and CUDA graphs: elsewhere the option
    is ignored and the motion modules keep the default backend.
    """
    from fastsync.accel import short_attention

    if name != short_attention.BACKEND_NAME:
        return name
    if device.type != "cuda":
        return ""
    if not short_attention.available():
        raise FastsyncError("FastOptions.motion_attention='triton-short' needs Triton, which this torch lacks",
                            hint="install a CUDA build of torch (it ships Triton) or choose 'sdpa-efficient'")
    return short_attention.register()


_LIBRARY_DEFAULTS: tuple[int, int] | None = None


def set_cpu_threads(count: int) -> None:
    """Process-wide intra-op thread count of torch and OpenCV; 0 restores their defaults."""
    import cv2

    global _LIBRARY_DEFAULTS
    if _LIBRARY_DEFAULTS is None:
        _LIBRARY_DEFAULTS = (torch.get_num_threads(), cv2.getNumThreads())
    torch_threads, cv2_threads = (count, count) if count else _LIBRARY_DEFAULTS
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv2_threads)
