"""Regional torch.compile: the repeated blocks, not the whole UNet.

Compiling the whole 1.27 B-parameter UNet as one graph takes minutes (the reference
measured 167 s). Its time is spent in a few block types repeated at four widths, so we
compile each ResNet block, spatial transformer and motion module on its own: blocks of
the same shape share one compiled graph (parameters are graph inputs), and the cold
start is the sum over distinct shapes only. Inductor's on-disk cache makes a second
process reuse the kernels.

All compiler flags live here, in one place.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from fastsync.models.attention import SpatialTransformer
from fastsync.models.motion_module import MotionModule
from fastsync.models.resnet import ResnetBlock

REGIONS = (ResnetBlock, SpatialTransformer, MotionModule)
DEFAULT_CACHE_DIR = os.path.expanduser("~/.cache/fastsync/inductor")


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
    # around them, which is where eager PyTorch loses its time on this model.
    inductor.coordinate_descent_tuning = False


def compile_regions(model: nn.Module, *, mode: str | None = None) -> int:
    """Compile every region module in place; returns how many were wrapped."""
    configure_inductor()
    count = 0
    for module in model.modules():
        if isinstance(module, REGIONS):
            module.compile(fullgraph=True, dynamic=False, mode=mode)
            count += 1
    return count


def compile_vae_regions(vae: nn.Module) -> int:
    """The VAE's ResNet blocks (diffusers' ResnetBlock2D): a third of a chunk's GPU time at
    512 px goes to VAE encode/decode, mostly in GroupNorm+SiLU around its convolutions."""
    from diffusers.models.resnet import ResnetBlock2D

    configure_inductor()
    count = 0
    for module in vae.modules():
        if isinstance(module, ResnetBlock2D):
            module.compile(fullgraph=True, dynamic=False)
            count += 1
    return count


def eager_context():
    """Run compiled regions eagerly (e.g. a short last chunk, whose shape would recompile)."""
    return torch.compiler.set_stance("force_eager")
