"""The VAE and the DDIM scheduler: taken from diffusers, configured like the reference.

diffusers is the well-kept implementation of both; we only pin their configuration
here, so that the numbers match the reference's `configs/scheduler_config.json` and
`stabilityai/sd-vae-ft-mse`.

diffusers is imported inside the functions that build the models, not at the top. Its
import runs diffusers.utils, which imports torch._dynamo: ~1.2 s on the 2-core CI machine
(bench/results/import_cpu.json), 6.8 s + 5 s on the H100 machine (bench/results/README.md).
The constants here are needed by modules that never build a VAE (fastsync.denoise, and
through it fastsync.api), so they must not pay for it. Importing from diffusers'
submodules instead would not help: Python runs the package's __init__ first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fastsync.errors import CheckpointError, FastsyncError

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDIMScheduler

# configs/scheduler_config.json of the reference, key for key.
DDIM_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
    trained_betas=None,
)

VAE_SCALING_FACTOR = 0.18215  # SD 1.x latent scale; the reference sets shift_factor to 0
VAE_SHIFT_FACTOR = 0.0
VAE_DOWNSCALE = 8  # three 2x downsamples between pixels and latents

# sd-vae-ft-mse's architecture (its config.json); the tiny preset keeps the topology
# (4 blocks, so still 8x) with narrow channels, for CPU tests.
_VAE_ARCH = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=256,
)
VAE_PRESETS = {
    "full": dict(_VAE_ARCH, block_out_channels=(128, 256, 512, 512), layers_per_block=2),
    "tiny": dict(_VAE_ARCH, block_out_channels=(32, 32, 64, 64), layers_per_block=1),
}


# diffusers imports its Flax models as well whenever jax and flax are installed: 1.9 s of
# the VAE's 18 s import on the H200 image (bench/results/vae_import_h200.txt). fastsync
# runs on torch only. USE_FLAX is diffusers' own switch; a value the user set is kept.
DIFFUSERS_ENV = {"USE_FLAX": "0"}


def import_diffusers():
    """diffusers, after DIFFUSERS_ENV's defaults; lean where extra_imports.LEAN_IMPORTS_ENV
    asks and diffusers is not imported yet. diffusers decides once, on its first import,
    which optional packages exist: it then goes without them for the whole process, while
    other code can still import them."""
    from fastsync.tools.extra_imports import LEAN_IMPORTS_ENV, hidden

    set_diffusers_env()
    if os.environ.get(LEAN_IMPORTS_ENV) != "1" or "diffusers" in sys.modules:
        import diffusers

        return diffusers
    with hidden():
        import diffusers

        # the lazy modules fastsync uses, resolved while the others still look absent
        diffusers.AutoencoderKL, diffusers.DDIMScheduler  # noqa: B018
    return diffusers


def set_diffusers_env() -> None:
    """Set DIFFUSERS_ENV's defaults; before diffusers' first import, which reads them."""
    for key, value in DIFFUSERS_ENV.items():
        os.environ.setdefault(key, value)


def diffusers_class(name: str):
    """`diffusers.<name>`, or a FastsyncError that says which package broke the import.

    diffusers imports the installed HF transformers whenever one is present (its model
    loaders do), although neither fastsync nor the VAE needs it; a transformers that cannot
    import (e.g. its tokenizers pin is not met) then fails diffusers' import too.
    """
    try:
        return getattr(import_diffusers(), name)
    except (ImportError, RuntimeError) as exc:
        raise FastsyncError(
            f"diffusers could not import {name}: {exc}",
            hint="if the error names transformers or tokenizers: upgrade transformers to a version that imports "
                 "cleanly, or uninstall it (fastsync does not need it)",
        ) from exc


def make_scheduler() -> DDIMScheduler:
    return diffusers_class("DDIMScheduler")(**DDIM_CONFIG)


def _configure(vae: AutoencoderKL) -> AutoencoderKL:
    vae.register_to_config(scaling_factor=VAE_SCALING_FACTOR, shift_factor=VAE_SHIFT_FACTOR)
    return vae.eval().requires_grad_(False)


def random_vae(size: str = "full", *, seed: int = 0) -> AutoencoderKL:
    AutoencoderKL = diffusers_class("AutoencoderKL")  # noqa: N806 (the class, under its own name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**VAE_PRESETS[size])
    return _configure(vae)


def load_vae(vae_dir: Path) -> AutoencoderKL:
    """Load sd-vae-ft-mse from a local diffusers folder, or from the HF cache by repo id."""
    AutoencoderKL = diffusers_class("AutoencoderKL")  # noqa: N806 (the class, under its own name)

    if vae_dir.is_dir():
        try:
            return _configure(AutoencoderKL.from_pretrained(vae_dir))
        except Exception as exc:
            raise CheckpointError(f"not a diffusers AutoencoderKL folder: {exc}", vae_dir) from exc
    try:  # the reference's own way: the hub cache, no network
        return _configure(AutoencoderKL.from_pretrained("stabilityai/sd-vae-ft-mse", local_files_only=True))
    except Exception as exc:
        raise CheckpointError(
            "the VAE (stabilityai/sd-vae-ft-mse) is missing",
            vae_dir,
            hint="run `fastsync download --dir <checkpoint dir>`, or pass --random-weights",
        ) from exc
