"""The encoder (down), bottleneck (mid) and decoder (up) blocks of the 3D UNet.

One layer of a block is: ResNet -> spatial audio transformer (in cross-attention blocks)
-> motion module (where the config asks for one). Blocks without cross-attention or
motion modules keep an empty `attentions` / `motion_modules` list, which adds no keys.

Each block exposes `layer(i, ...)` so that acceleration code (DeepCache) can run a single
layer of a block without duplicating its math.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastsync.config import MotionModuleConfig
from fastsync.models.attention import SpatialTransformer
from fastsync.models.motion_module import MotionModule
from fastsync.models.resnet import Downsample, ResnetBlock, Upsample, cat_channels


class BlockSpec:
    """What every block needs from the UNet config, resolved once (groups, eps, heads...)."""

    def __init__(
        self,
        *,
        temb_channels: int,
        groups: int,
        eps: float,
        heads: int,
        cross_attention_dim: int,
        add_audio_layer: bool,
        motion: MotionModuleConfig | None,
    ):
        self.temb_channels = temb_channels
        self.groups = groups
        self.eps = eps
        self.heads = heads
        self.cross_attention_dim = cross_attention_dim
        self.add_audio_layer = add_audio_layer
        self.motion = motion  # None: this block has no motion modules

    def resnet(self, in_channels: int, out_channels: int, output_scale_factor: float = 1.0) -> ResnetBlock:
        return ResnetBlock(
            in_channels,
            out_channels,
            self.temb_channels,
            groups=self.groups,
            eps=self.eps,
            output_scale_factor=output_scale_factor,
        )

    def transformer(self, channels: int) -> SpatialTransformer:
        return SpatialTransformer(
            channels,
            self.heads,
            num_groups=self.groups,
            cross_attention_dim=self.cross_attention_dim,
            add_audio_layer=self.add_audio_layer,
        )

    def motion_modules(self, channels: int, count: int) -> nn.ModuleList:
        if self.motion is None:
            return nn.ModuleList()
        return nn.ModuleList([MotionModule(channels, self.motion) for _ in range(count)])


def resnet_attention_motion(block: nn.Module, i: int, x: Tensor, temb: Tensor, audio: Tensor,
                            null_rows: int = 0, duplicate: bool = False) -> Tensor:
    """Layer i of a down or up block: ResNet, then the audio transformer and the motion
    module when the block has them. (B, C_in, F, H, W) -> (B, C_out, F, H, W).

    null_rows and duplicate as in SpatialTransformer.forward; with duplicate, x holds the
    first half of a CFG pair's equal halves (temb the whole pair's) and the output both.
    """
    x = block.resnets[i](x, temb[: x.shape[0]] if duplicate else temb)
    if len(block.attentions) > 0:
        x = block.attentions[i](x, audio, null_rows, duplicate)
    elif duplicate:
        x = torch.cat([x, x])
    if len(block.motion_modules) > 0:
        x = block.motion_modules[i](x)
    return x


class DownBlock(nn.Module):
    """`CrossAttnDownBlock3D` (cross_attention=True) or `DownBlock3D`.

    Returns the block output and the skip tensors: every layer's output, then the
    downsampled output when the block downsamples.
    """

    def __init__(
        self,
        spec: BlockSpec,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        *,
        cross_attention: bool,
        add_downsample: bool,
        downsample_padding: int,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [spec.resnet(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)]
        )
        self.attentions = nn.ModuleList(
            [spec.transformer(out_channels) for _ in range(num_layers)] if cross_attention else []
        )
        self.motion_modules = spec.motion_modules(out_channels, num_layers)
        self.downsamplers = (
            nn.ModuleList([Downsample(out_channels, downsample_padding)]) if add_downsample else None
        )

    def layer(self, i: int, x: Tensor, temb: Tensor, audio: Tensor, null_rows: int = 0,
              duplicate: bool = False) -> Tensor:
        return resnet_attention_motion(self, i, x, temb, audio, null_rows, duplicate)

    def forward(self, x: Tensor, temb: Tensor, audio: Tensor, null_rows: int = 0,
                duplicate: bool = False) -> tuple[Tensor, list[Tensor]]:
        """duplicate: x is the first half of a CFG pair (see resnet_attention_motion); the
        first layer computes it once and returns both halves."""
        skips = []
        for i in range(len(self.resnets)):
            x = self.layer(i, x, temb, audio, null_rows, duplicate and i == 0)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)  # (B, C_out, F, H/2, W/2)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """`UNetMidBlock3DCrossAttn`: ResNet, then (transformer, [motion module], ResNet) per layer."""

    def __init__(self, spec: BlockSpec, channels: int, output_scale_factor: float, num_layers: int = 1):
        super().__init__()
        self.resnets = nn.ModuleList(
            [spec.resnet(channels, channels, output_scale_factor) for _ in range(num_layers + 1)]
        )
        self.attentions = nn.ModuleList([spec.transformer(channels) for _ in range(num_layers)])
        self.motion_modules = spec.motion_modules(channels, num_layers)

    def forward(self, x: Tensor, temb: Tensor, audio: Tensor, null_rows: int = 0) -> Tensor:
        # x (B, C, F, h, w) -> same shape
        x = self.resnets[0](x, temb)
        for i in range(len(self.attentions)):
            x = self.attentions[i](x, audio, null_rows)
            if len(self.motion_modules) > 0:
                x = self.motion_modules[i](x)
            x = self.resnets[i + 1](x, temb)
        return x


class UpBlock(nn.Module):
    """`CrossAttnUpBlock3D` (cross_attention=True) or `UpBlock3D`.

    Layer i concatenates the running tensor with one skip tensor along channels before its
    ResNet; skips are consumed last-in first-out. The last layer's skip comes from the
    previous resolution level, so it has `skip_channels` channels.
    """

    def __init__(
        self,
        spec: BlockSpec,
        skip_channels: int,
        out_channels: int,
        prev_output_channels: int,
        num_layers: int,
        *,
        cross_attention: bool,
        add_upsample: bool,
    ):
        super().__init__()
        resnets = []
        for i in range(num_layers):
            running = prev_output_channels if i == 0 else out_channels
            skip = skip_channels if i == num_layers - 1 else out_channels
            resnets.append(spec.resnet(running + skip, out_channels))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(
            [spec.transformer(out_channels) for _ in range(num_layers)] if cross_attention else []
        )
        self.motion_modules = spec.motion_modules(out_channels, num_layers)
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if add_upsample else None

    def layer(self, i: int, x: Tensor, skip: Tensor, temb: Tensor, audio: Tensor, null_rows: int = 0) -> Tensor:
        x = cat_channels(x, skip)  # (B, C_run + C_skip, F, H, W)
        return resnet_attention_motion(self, i, x, temb, audio, null_rows)

    def forward(
        self,
        x: Tensor,
        skips: list[Tensor],
        temb: Tensor,
        audio: Tensor,
        upsample_size: tuple[int, int] | None = None,
        null_rows: int = 0,
    ) -> Tensor:
        # `skips` holds exactly this block's skip tensors, oldest first.
        for i in range(len(self.resnets)):
            x = self.layer(i, x, skips[-1 - i], temb, audio, null_rows)
        if self.upsamplers is not None:
            if upsample_size is None:
                raise ValueError("an upsampling block needs the spatial size of the next skip tensor")
            x = self.upsamplers[0](x, upsample_size)  # (B, C_out, F, *upsample_size)
        return x
