"""Typed configuration: the UNet architecture and named presets.

`UNetConfig` mirrors the `model:` section of LatentSync's UNet yaml files
(`configs/unet/stage2.yaml`, `stage2_512.yaml`), key for key, so a config read
from an official yaml or saved beside a checkpoint maps onto it directly.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class MotionModuleConfig:
    num_attention_heads: int = 8
    num_transformer_block: int = 1
    # Each entry is one temporal self-attention inside the transformer block.
    attention_block_types: tuple[str, ...] = ("Temporal_Self", "Temporal_Self")
    temporal_position_encoding: bool = True
    # The sinusoidal table has this many rows; clips longer than this cannot be attended over.
    temporal_position_encoding_max_len: int = 24
    temporal_attention_dim_div: int = 1
    zero_initialize: bool = True


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 13  # noisy latents 4 + mask 1 + masked-face latents 4 + reference latents 4
    out_channels: int = 4
    sample_size: int = 64  # latent side at 512 px (VAE downsamples by 8)
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock3D",
        "CrossAttnDownBlock3D",
        "CrossAttnDownBlock3D",
        "DownBlock3D",
    )
    mid_block_type: str = "UNetMidBlock3DCrossAttn"
    up_block_types: tuple[str, ...] = (
        "UpBlock3D",
        "CrossAttnUpBlock3D",
        "CrossAttnUpBlock3D",
        "CrossAttnUpBlock3D",
    )
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 384  # whisper-tiny width (768 would mean whisper-small)
    attention_head_dim: int = 8  # LatentSync passes this as the number of heads
    add_audio_layer: bool = True
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    resnet_time_scale_shift: str = "default"
    use_motion_module: bool = True
    motion_module_resolutions: tuple[int, ...] = (1, 2, 4, 8)
    motion_module_mid_block: bool = False
    motion_module_decoder_only: bool = False
    motion_module_type: str = "Vanilla"
    motion_module_kwargs: MotionModuleConfig = field(default_factory=MotionModuleConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> UNetConfig:
        """Build from a yaml/json `model:` section; unknown keys are an error, not ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown UNet config keys: {unknown}")
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key == "motion_module_kwargs":
                mm = dict(value)
                if "attention_block_types" in mm:
                    mm["attention_block_types"] = tuple(mm["attention_block_types"])
                values[key] = MotionModuleConfig(**mm)
            elif isinstance(value, list):
                values[key] = tuple(value)
            else:
                values[key] = value
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> UNetConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Named presets. `stage2` is LatentSync 1.5 (256 px), `stage2_512` is 1.6 (512 px):
# identical weights layout, only the training resolution differs.
UNET_PRESETS: dict[str, UNetConfig] = {
    "stage2": UNetConfig(sample_size=32),
    "stage2_512": UNetConfig(sample_size=64),
    # Same topology with narrow channels (the golden `unet_tiny` case): fast CPU tests.
    "tiny": UNetConfig(block_out_channels=(32, 64, 64, 64), sample_size=64),
}

# LatentSync release -> (UNet preset, face resolution in pixels).
VERSIONS: dict[str, tuple[str, int]] = {
    "1.5": ("stage2", 256),
    "1.6": ("stage2_512", 512),
}


# `--model-size tiny` is for CPU runs (CI, trials without weights). Spatial attention
# costs tokens^2: at 512 px the tiny UNet still attends over 64*64 = 4096 latent tokens
# per frame, about 4 s of CPU per output frame. At 128 px faces it is 256 tokens, and a
# 10 s clip runs in a couple of minutes on two cores. Everything else is unchanged.
TINY_RESOLUTION = 128


def face_resolution(version: str, model_size: str = "full") -> int:
    return TINY_RESOLUTION if model_size == "tiny" else VERSIONS[version][1]


def unet_config_for(version: str, model_size: str = "full") -> UNetConfig:
    preset, _ = VERSIONS[version]
    if model_size == "tiny":
        return dataclasses.replace(UNET_PRESETS["tiny"], sample_size=TINY_RESOLUTION // 8)
    return UNET_PRESETS[preset]
