"""Fast-mode `Components` on the CPU from given models, for tests that skip the loader."""

from __future__ import annotations

import torch

from fastsync.components import make_scheduler
from fastsync.engine import Components, EngineOptions, FastOptions
from fastsync.face.mask import mask_for_resolution


def cpu_components(unet, vae, fast: FastOptions, resolution: int = 64) -> Components:
    options = EngineOptions(random_weights=True, model_size="tiny", device="cpu", mode="fast", fast=fast)
    mask = torch.from_numpy(mask_for_resolution(resolution)).float()
    return Components(unet, vae, None, make_scheduler(), None, mask, torch.device("cpu"), torch.float32, options)
