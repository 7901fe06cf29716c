"""Regional torch.compile: the repeated blocks, not the whole UNet.

Compiling the whole 1.27 B-parameter UNet as one graph takes minutes (the reference
measured 167 s). Its time is spent in a few block types repeated at four widths, so we
compile each ResNet block, spatial transformer and motion module on its own: blocks of
the same shape share one compiled graph (parameters are graph inputs), and the cold
start is the sum over distinct shapes only. Inductor's on-disk cache makes a second
process reuse the kernels; with a `RegionCompiler` (fastsync.accel.precompile) the whole
compiled regions are kept on disk, and a second process does not trace them again.

All compiler flags live here, in one place.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from fastsync.accel import precompile
from fastsync.models.attention import SpatialTransformer
from fastsync.models.motion_module import MotionModule
from fastsync.models.resnet import ResnetBlock

REGIONS = (ResnetBlock, SpatialTransformer, MotionModule)
DEFAULT_CACHE_DIR = os.path.expanduser("~/.cache/fastsync/inductor")
# "1": let inductor time each Triton kernel's launch configs on its first launch, as it does
# by default. fastsync's default is off (see kernel_tuning). The compile workers inherit it.
KERNEL_TUNING_ENV = "FASTSYNC_KERNEL_TUNING"


def kernel_tuning() -> bool:
    """Whether Triton kernels time their launch configs on first launch (KERNEL_TUNING_ENV).

    Inductor gives a pointwise or reduction kernel several launch configs and times them on
    the kernel's first launch; a later process reads the choices from the cache. The compile
    workers only compile, so in a first process the main process did all the timing: 10.3
    and 12.7 s in 258 kernels on an H200, the whole difference between a first and a second
    process's warm chunk. Off, each kernel keeps inductor's heuristic first config. Side by
    side, a job's 20-step chunk took the same time either way (1.236 against 1.227 s in a
    second process, 1.269 against 1.283 s in a first), and a first process was ready after
    41.8 s against 72.9 s (bench/results/cold_start_h200_tuning.json). The UNet's CFG forward
    took 102.1 ms untimed against 102.2 ms timed, in one session (unet_h200_untuned.json,
    unet_h200_tuned.json). Letting the workers launch and time instead (a one-off variant,
    measured in cold_start_h200_tuning.json) kept the main process free of it but made the
    workers' part 12 s longer: ready after 60.0 s.
    """
    return os.environ.get(KERNEL_TUNING_ENV, "0") == "1"


def configure_inductor(cache_dir: str | None = None) -> None:
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache_dir or DEFAULT_CACHE_DIR)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    import torch._inductor.config as inductor

    inductor.fx_graph_cache = True
    # Every distinct block shape is one "recompile" of the same code object (about 40 for
    # the full UNet); the default limit of 8 would fall back to errors.
    torch._dynamo.config.recompile_limit = 128
    torch._dynamo.config.accumulated_recompile_limit = 1024
    # Convs and matmuls stay with cuDNN/cuBLAS; inductor fuses the norms and pointwise ops
    # around them, which is where eager PyTorch loses its time on this model. Coordinate-
    # descent tuning of those kernels stays off: on an H100 the UNet's compile with it had
    # not finished after about 6 minutes, against 74 s without it
    # (bench/results/unet_h100_coordinate_descent.json).
    inductor.coordinate_descent_tuning = False
    # Programmatic dependent launch of those kernels (triton.enable_pdl) stays at torch's
    # default, off: on an H100 the forward took 93.5 ms with it against 93.1 ms without
    # (bench/results/unet_h100_pdl.json).
    if not kernel_tuning():
        inductor.triton.autotune_pointwise = False
        # reductions: inductor's filter down to one config, a test switch of torch's (torch
        # 2.11 has it); it only narrows the configs
        tests = getattr(inductor, "test_configs", None)
        if hasattr(tests, "force_filter_reduction_configs"):
            tests.force_filter_reduction_configs = True
        pin_launch_configs()


def _first_config_wins(self, *args, **kwargs) -> dict:
    """Stands in for CachingAutotuner.benchmark_all_configs: the launchers' timings as their
    order, so the choice that follows keeps the heuristic's first config, with no launch."""
    return {launcher: float(i) for i, launcher in enumerate(self.launchers)}


def pin_launch_configs() -> None:
    """Every Triton kernel of inductor's keeps its first launch config; none is chosen by timing.

    kernel_tuning's promise, kept where inductor's switches above do not keep it: with them,
    torch 2.11 still gave nine of the UNet's layer-norm reductions two configs each (R0_BLOCK
    1024 and 512, or 512 and 256) and timed them at their first launch, in every process
    (bench/results/processes_h100_kernels.json, bench/check_processes.py, on an H100). The
    two configs sum in another order, and the timing picks either, so a process got its own
    rounding: the same UNet forward differed by up to 0.0029 between processes (24 pairs of
    25) and a chunk by up to 0.0078, while the VAE, whose kernels have one config each, and eager fast mode
    were equal bit for bit. Inductor's `deterministic` switch did not stop that timing. With
    the first config kept, three processes on one H100 (one compiling, two loading what it
    kept) gave equal encodes, decodes, UNet forwards and chunks, bit for bit
    (processes_h100_pinned.json). The CFG forward took 91.1 ms pinned against 90.5 ms with
    every config timed, in two processes on one machine whose eager forwards differed by 0.8
    ms (unet_h100_pinned_tuning*.json). A kernel tuned with FASTSYNC_KERNEL_TUNING=1 keeps
    its timed choice."""
    from torch._inductor.runtime import triton_heuristics

    tuner = triton_heuristics.CachingAutotuner
    if hasattr(tuner, "benchmark_all_configs"):
        tuner.benchmark_all_configs = _first_config_wins


def regions_dir() -> str:
    """Where a RegionCompiler keeps its files: inside inductor's cache, so that emptying
    that cache (or pointing TORCHINDUCTOR_CACHE_DIR elsewhere) empties both."""
    configure_inductor()
    return os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], "fastsync-regions")


def _compile_each(model: nn.Module, kinds: tuple[type, ...], store: precompile.RegionCompiler | None,
                  mode: str | None = None) -> int:
    return _compile_modules([m for m in model.modules() if isinstance(m, kinds)], store, mode)


def _compile_modules(modules: list[nn.Module], store: precompile.RegionCompiler | None,
                     mode: str | None = None) -> int:
    configure_inductor()
    for module in modules:
        if store is None:
            module.compile(fullgraph=True, dynamic=False, mode=mode)
        else:
            store.install(module)
    return len(modules)


def compile_regions(model: nn.Module, *, mode: str | None = None,
                    store: precompile.RegionCompiler | None = None) -> int:
    """Compile every region module in place (lazily: on its first call); returns how many.
    With `store`, the compiled regions are kept on disk; `mode` applies without one only."""
    return _compile_each(model, REGIONS, store, mode)


def compile_glue(unet: nn.Module, *, mode: str | None = None,
                 store: precompile.RegionCompiler | None = None) -> int:
    """Compile the UNet's layers between the regions, its upsamplers and its head, as
    regions of their own (fastsync.accel.glue); returns how many. As compile_regions."""
    from fastsync.accel.glue import glue_modules

    return _compile_modules(glue_modules(unet), store, mode)


def vae_regions() -> tuple[type, ...]:
    """The VAE's compiled regions: its encoder and its decoder, each whole (diffusers' Encoder
    and Decoder). A third of a chunk's GPU time at 512 px went to VAE encode and decode.
    Compiled whole, the samplers, the mid-block attention and the heads fuse too, and with
    fast mode's norms (accel.group_norm) a chunk's VAE work took 0.191 s against 0.288 s for
    the ResNet blocks alone as regions with PyTorch's norms (bench/results/vae_h200_column_gn.json).
    Each has one input shape (fast mode's fixed micro-batch), so it compiles once."""
    from diffusers.models.autoencoders.vae import Decoder, Encoder

    return (Encoder, Decoder)


def compile_vae_regions(vae: nn.Module, *, store: precompile.RegionCompiler | None = None) -> int:
    """Compile the VAE's regions (vae_regions) in place, lazily; returns how many. Their
    attention first calls its processor directly, so that they can be kept on disk
    (fastsync.accel.vae_attention)."""
    from fastsync.accel import vae_attention

    vae_attention.use_in(vae)
    return _compile_each(vae, vae_regions(), store)


@contextlib.contextmanager
def eager_context():
    """Run compiled regions eagerly (e.g. a short last chunk, whose shape would recompile)."""
    token = precompile.set_eager(True)
    try:
        with torch.compiler.set_stance("force_eager"):
            yield
    finally:
        precompile.reset_eager(token)
