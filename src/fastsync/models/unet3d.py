"""LatentSync's 3D UNet: an SD-1.5-style UNet inflated over frames, conditioned on audio.

    sample (B, 13, F, H, W), timestep, audio (B*F, 50, 384)  ->  noise prediction (B, 4, F, H, W)

Parameter names and shapes are those of the official `latentsync_unet.pt`, so it loads with
strict=True. Stages of `forward` (shapes for the full model at 512 px: H = W = 64):

    1. time embedding                     (B, 1280)
    2. stem conv_in                       (B, 320, F, 64, 64)
    3. encoder, 4 levels                  (B, 1280, F, 8, 8) + 12 skip tensors (stem included)
    4. bottleneck                         (B, 1280, F, 8, 8)
    5. decoder up to its very last layer  (B, 320, F, 64, 64)
    6. last decoder layer, with the stem  (B, 320, F, 64, 64)
    7. head: GroupNorm, SiLU, conv_out    (B, 4, F, 64, 64)

`features` runs stages 1-5 and `finish` stages 6-7. Stages 5 and 6 are separate methods
because DeepCache (fastsync.accel.deepcache) caches the output of stage 5 and re-runs only
stages 1, 2, 6 and 7 on its cheap steps.

`cfg_pair=True` (fast mode) skips work that a classifier-free-guidance batch makes
redundant: the two halves are equal until audio enters at the first cross-attention, and
the unconditional half's cross-attention, on all-zero audio, is to_out's bias alone.

forward has no data-dependent Python control flow and never syncs with the device
(no .item()), so it can be compiled and captured in a CUDA graph from outside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastsync.config import UNetConfig
from fastsync.models.resnet import FrameConv2d
from fastsync.models.unet_blocks import BlockSpec, DownBlock, MidBlock, UpBlock

DOWN_TYPES = {"CrossAttnDownBlock3D": True, "DownBlock3D": False}  # name -> has cross-attention
UP_TYPES = {"CrossAttnUpBlock3D": True, "UpBlock3D": False}
MID_TYPE = "UNetMidBlock3DCrossAttn"
MAX_PERIOD = 10000  # sinusoidal timestep features: periods from 2*pi up to about 2*pi*10000 steps


def validate_config(config: UNetConfig) -> None:
    """Reject config values this implementation does not reproduce, instead of guessing."""
    problems = []
    levels = len(config.block_out_channels)
    if len(config.down_block_types) != levels or len(config.up_block_types) != levels:
        problems.append("down_block_types, up_block_types and block_out_channels must have equal length")
    problems += [f"down block type {t!r}" for t in config.down_block_types if t not in DOWN_TYPES]
    problems += [f"up block type {t!r}" for t in config.up_block_types if t not in UP_TYPES]
    if config.mid_block_type != MID_TYPE:
        problems.append(f"mid_block_type {config.mid_block_type!r} (only {MID_TYPE!r})")
    if config.act_fn != "silu":
        problems.append(f"act_fn {config.act_fn!r} (only 'silu')")
    if config.resnet_time_scale_shift != "default":
        problems.append(f"resnet_time_scale_shift {config.resnet_time_scale_shift!r} (only 'default')")
    if config.block_out_channels[0] % 2:
        problems.append("block_out_channels[0] must be even (sinusoidal timestep features)")
    if config.use_motion_module:
        mm = config.motion_module_kwargs
        if config.motion_module_type != "Vanilla":
            problems.append(f"motion_module_type {config.motion_module_type!r} (only 'Vanilla')")
        problems += [f"attention block type {t!r}" for t in mm.attention_block_types if t != "Temporal_Self"]
    if problems:
        raise ValueError("unsupported UNet config: " + "; ".join(problems))


def timestep_features(timesteps: Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> Tensor:
    """DDPM sinusoidal features, always in fp32: (B,) -> (B, dim).

    Frequencies w_i = MAX_PERIOD^(-i / (dim/2 - freq_shift)), i < dim/2; features
    [sin(t w), cos(t w)], or [cos, sin] with flip_sin_to_cos. fp32 because t is up to 999:
    in fp16 the phase t*w would lose whole radians.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) * -math.log(MAX_PERIOD)
    freqs = torch.exp(exponent / (half - freq_shift))  # (dim/2,)
    phase = timesteps.float()[:, None] * freqs[None, :]  # (B, dim/2)
    if flip_sin_to_cos:
        return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)
    return torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)


class TimestepEmbedding(nn.Module):
    """Two-layer MLP on the sinusoidal features: Linear, SiLU, Linear."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class UNet3DConditionModel(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        validate_config(config)
        self.config = config
        channels = list(config.block_out_channels)
        levels = len(channels)
        temb_channels = channels[0] * 4
        heads = config.attention_head_dim
        heads_per_level = list(heads) if isinstance(heads, (tuple, list)) else [heads] * levels
        mm = config.motion_module_kwargs if config.use_motion_module else None

        def spec(level_heads: int, with_motion: bool) -> BlockSpec:
            return BlockSpec(
                temb_channels=temb_channels,
                groups=config.norm_num_groups,
                eps=config.norm_eps,
                heads=level_heads,
                cross_attention_dim=config.cross_attention_dim,
                add_audio_layer=config.add_audio_layer,
                motion=mm if with_motion else None,
            )

        resolutions = config.motion_module_resolutions
        self.conv_in = FrameConv2d(config.in_channels, channels[0], kernel_size=3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], temb_channels)

        down = []
        for i, block_type in enumerate(config.down_block_types):
            with_motion = 2**i in resolutions and not config.motion_module_decoder_only
            down.append(
                DownBlock(
                    spec(heads_per_level[i], with_motion),
                    channels[max(i - 1, 0)],
                    channels[i],
                    config.layers_per_block,
                    cross_attention=DOWN_TYPES[block_type],
                    add_downsample=i < levels - 1,
                    downsample_padding=config.downsample_padding,
                )
            )
        self.down_blocks = nn.ModuleList(down)

        self.mid_block = MidBlock(
            spec(heads_per_level[-1], config.motion_module_mid_block),
            channels[-1],
            output_scale_factor=config.mid_block_scale_factor,
        )

        up = []
        rev_channels, rev_heads = channels[::-1], heads_per_level[::-1]
        for i, block_type in enumerate(config.up_block_types):
            # The reference hard-codes 3 here (four resolution levels), whatever `levels` is.
            with_motion = 2 ** (3 - i) in resolutions
            up.append(
                UpBlock(
                    spec(rev_heads[i], with_motion),
                    skip_channels=rev_channels[min(i + 1, levels - 1)],
                    out_channels=rev_channels[i],
                    prev_output_channels=rev_channels[max(i - 1, 0)],
                    num_layers=config.layers_per_block + 1,
                    cross_attention=UP_TYPES[block_type],
                    add_upsample=i < levels - 1,
                )
            )
        self.up_blocks = nn.ModuleList(up)

        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, channels[0], eps=config.norm_eps)
        self.conv_out = FrameConv2d(channels[0], config.out_channels, kernel_size=3, padding=1)

    # -- stages -------------------------------------------------------------------------

    def embed_time(self, timestep: Tensor | int, sample: Tensor) -> Tensor:
        """timestep: 0-dim, (1,) or (B,) -> (B, 4*C0) in the sample's dtype."""
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
        features = timestep_features(
            t, self.config.block_out_channels[0], self.config.flip_sin_to_cos, self.config.freq_shift
        )
        return self.time_embedding(features.to(sample.dtype))

    def stem(self, sample: Tensor) -> Tensor:
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        return self.conv_in(sample)  # (B, C0, F, H, W)

    def down(self, stem: Tensor, temb: Tensor, audio: Tensor, null_rows: int = 0,
             duplicate: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Encoder. Returns the deepest features and all skip tensors, the stem first.

        duplicate: `stem` is the first half of a CFG pair's equal halves; the first layer
        computes it once, and the outputs (the stem among the skips) hold both halves.
        """
        skips = [torch.cat([stem, stem]) if duplicate else stem]
        x = stem
        for i, block in enumerate(self.down_blocks):
            x, block_skips = block(x, temb, audio, null_rows, duplicate and i == 0)
            skips.extend(block_skips)
        return x, skips

    def up_deep(self, x: Tensor, skips: list[Tensor], temb: Tensor, audio: Tensor, null_rows: int = 0) -> Tensor:
        """Decoder except the last layer of the last block: uses every skip but the stem."""
        skips = list(skips)
        for block in self.up_blocks[:-1]:
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            size = (skips[-1].shape[-2], skips[-1].shape[-1])  # the next level's resolution
            x = block(x, block_skips, temb, audio, upsample_size=size, null_rows=null_rows)
        last = self.up_blocks[-1]
        for i in range(len(last.resnets) - 1):
            x = last.layer(i, x, skips.pop(), temb, audio, null_rows)
        if len(skips) != 1:
            raise AssertionError(f"decoder left {len(skips)} skip tensors, expected only the stem")
        return x

    def up_last(self, x: Tensor, stem: Tensor, temb: Tensor, audio: Tensor, null_rows: int = 0) -> Tensor:
        """Last layer of the last up block (never upsamples): its skip tensor is the stem."""
        last = self.up_blocks[-1]
        return last.layer(len(last.resnets) - 1, x, stem, temb, audio, null_rows)

    def head(self, x: Tensor) -> Tensor:
        x = F.silu(self.conv_norm_out(x))  # GroupNorm over (C, F, H, W)
        return self.conv_out(x)  # (B, out_channels, F, H, W)

    def check_inputs(self, sample: Tensor, audio: Tensor) -> None:
        """Shape checks only (no device sync), with the expected layout in the message."""
        if sample.dim() != 5 or sample.shape[1] != self.config.in_channels:
            raise ValueError(
                f"sample must be (B, {self.config.in_channels}, F, H, W); got {tuple(sample.shape)}"
            )
        batch, _, frames = sample.shape[:3]
        if audio.dim() != 3 or audio.shape[0] != batch * frames:
            raise ValueError(
                f"encoder_hidden_states must be (B*F = {batch * frames}, tokens, "
                f"{self.config.cross_attention_dim}), one audio window per frame in (b, f) order; "
                f"got {tuple(audio.shape)}"
            )

    def null_rows(self, sample: Tensor, cfg_pair: bool) -> int:
        """How many leading rows of the audio are zeros: the unconditional half of a CFG pair."""
        if not cfg_pair:
            return 0
        if sample.shape[0] % 2:
            raise ValueError(f"cfg_pair needs an even batch [unconditional, conditional]; got {sample.shape[0]}")
        return sample.shape[0] // 2 * sample.shape[2]

    def features(self, sample: Tensor, timestep: Tensor | int, audio: Tensor,
                 cfg_pair: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Stages 1-5: (deep feature (B, C0, F, H, W), stem, temb), for `finish`."""
        null_rows = self.null_rows(sample, cfg_pair)
        # 1. time embedding: (B, 4*C0)
        temb = self.embed_time(timestep, sample)
        # 2-3. stem (B, C0, F, H, W), encoder (B, C_last, F, H/8, W/8) and the skip tensors.
        # A CFG pair's halves are equal up to the first cross-attention: computed once.
        stem = self.stem(sample[: sample.shape[0] // 2] if cfg_pair else sample)
        x, skips = self.down(stem, temb, audio, null_rows, duplicate=cfg_pair)
        # 4. bottleneck: same shape
        x = self.mid_block(x, temb, audio, null_rows)
        # 5. decoder up to its last layer: (B, C0, F, H, W)
        return self.up_deep(x, skips, temb, audio, null_rows), skips[0], temb

    def finish(self, deep: Tensor, stem: Tensor, temb: Tensor, audio: Tensor, null_rows: int = 0) -> Tensor:
        """Stages 6-7: the last decoder layer on (deep ++ stem), then the head."""
        return self.head(self.up_last(deep, stem, temb, audio, null_rows))

    def forward(self, sample: Tensor, timestep: Tensor | int, encoder_hidden_states: Tensor, *,
                cfg_pair: bool = False) -> Tensor:
        """sample (B, C_in, F, H, W); timestep 0-dim or (B,); encoder_hidden_states (B*F, S, D).

        cfg_pair=True is a promise about the inputs that saves work without changing the
        result: the batch is a classifier-free-guidance pair [unconditional, conditional]
        whose two halves of `sample` are equal and whose unconditional audio is all zeros.
        """
        audio = encoder_hidden_states
        self.check_inputs(sample, audio)
        deep, stem, temb = self.features(sample, timestep, audio, cfg_pair)
        return self.finish(deep, stem, temb, audio, self.null_rows(sample, cfg_pair))
