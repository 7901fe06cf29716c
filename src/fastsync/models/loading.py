"""Build the UNet from a checkpoint (`load_unet`) or from seeded random weights (`random_unet`).

Loading follows the meta-device pattern: the module is built without storage, the
checkpoint is memory-mapped, and `load_state_dict(assign=True)` makes the parameters point
at the mapped tensors. The weights are therefore never held twice in RAM; a dtype or device
change afterwards converts one tensor at a time.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from fastsync.config import UNetConfig
from fastsync.errors import CheckpointError
from fastsync.models.unet3d import UNet3DConditionModel

log = logging.getLogger(__name__)

MAX_LISTED_KEYS = 20  # longer lists are cut in error messages; the count is always given
OFFICIAL_FILE = "latentsync_unet.pt"


def build_unet_on_meta(config: UNetConfig) -> UNet3DConditionModel:
    """The model with shapes but no storage: free to build even at 1.27 B parameters."""
    with torch.device("meta"):
        return UNet3DConditionModel(config)


def expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every checkpoint entry the model expects (parameters and persistent buffers)."""
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def diff_keys(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, 'name: expected vs found' shape mismatches), each sorted."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(
        f"{k}: expected {list(expected[k])}, found {list(found[k])}"
        for k in set(expected) & set(found)
        if tuple(expected[k]) != tuple(found[k])
    )
    return missing, unexpected, mismatched


def _listing(title: str, items: list[str]) -> str:
    shown = items[:MAX_LISTED_KEYS]
    more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"\n  {title} ({len(items)}):" + "".join(f"\n    {k}" for k in shown) + more


def _read_checkpoint(path: Path) -> object:
    if not path.is_file():
        raise CheckpointError(
            "UNet checkpoint not found", path, hint=f"download {OFFICIAL_FILE} (ByteDance/LatentSync-1.6)"
        )
    if zipfile.is_zipfile(path):
        try:
            return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"could not read the checkpoint: {exc}", path) from exc
    # Pre-1.6 torch.save format: it cannot be memory-mapped, so it is read into RAM once.
    log.warning("%s is not a zip-format checkpoint; loading it without mmap", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"not a zip-format torch checkpoint and not readable as a legacy one ({exc})",
            path,
            hint="re-save it with torch.save(obj, path) from torch >= 1.6, or download it again",
        ) from exc


def _state_dict_of(raw: object, path: Path) -> dict[str, Tensor]:
    """Accept {'state_dict': ..., 'global_step'?: int} (the official layout) or a bare state dict."""
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise CheckpointError(
            "expected a state dict of tensors, or {'state_dict': {...}}",
            path,
            hint=f"point at {OFFICIAL_FILE}, not at a training or pipeline checkpoint",
        )
    state = dict(raw)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_unet(
    path: str | Path,
    config: UNetConfig,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> UNet3DConditionModel:
    """Load an official LatentSync UNet checkpoint with strict key and shape checking."""
    path = Path(path)
    model = build_unet_on_meta(config)
    state = _state_dict_of(_read_checkpoint(path), path)

    missing, unexpected, mismatched = diff_keys(
        expected_shapes(model), {k: tuple(v.shape) for k, v in state.items()}
    )
    if missing or unexpected or mismatched:
        raise CheckpointError(
            "checkpoint does not match the UNet config"
            + _listing("missing keys", missing)
            + _listing("unexpected keys", unexpected)
            + _listing("shape mismatches", mismatched),
            path,
            hint="check that the config matches the checkpoint (LatentSync 1.5/1.6 use the stage2 presets)",
        )
    model.load_state_dict(state, strict=True, assign=True)
    del state
    return _finish(model, device, dtype)


def _finish(
    model: UNet3DConditionModel, device: str | torch.device, dtype: torch.dtype
) -> UNet3DConditionModel:
    left_on_meta = [n for n, t in model.state_dict(keep_vars=True).items() if t.is_meta]
    if left_on_meta:  # would mean a tensor the checkpoint cannot fill, e.g. a non-persistent buffer
        raise AssertionError(f"tensors left without storage after loading: {left_on_meta[:5]}")
    # A blocking copy: PyTorch then converts the dtype on the CPU. Converting on the GPU
    # (non_blocking=True) was slower on an H200, 0.89 s against 0.66 s for the full UNet
    # (bench/results/load_h200.json).
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model


def random_unet(
    config: UNetConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> UNet3DConditionModel:
    """A UNet with seeded random weights, for tests and benchmarks.

    The reference zero-initialises conv_in, conv_out and every motion module's proj_out
    (a training choice: start as the image UNet). With those zeros the output would be
    identically zero (conv_out) and every motion module an identity, so a parity test on
    random weights would prove nothing about them. Here every weight is random: PyTorch's
    default init for linears and convs, and norms perturbed around (1, 0) so that swapped
    or skipped norms show up too. The position tables keep their sinusoidal values, as in
    the checkpoint.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet3DConditionModel(config)
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
                    module.weight.add_(0.1 * torch.randn(module.weight.shape, generator=generator))
                    module.bias.add_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return _finish(model, device, dtype)
