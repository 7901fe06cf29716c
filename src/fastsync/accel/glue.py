"""The UNet's layers between its blocks as compiled regions: the upsamplers and the head.

Why: fast mode compiles the repeated blocks (fastsync.accel.compile.REGIONS), and until
2026-12-06 the layers between them ran eagerly inside the captured graph. A profile of
the CFG forward on an H200 (bench/results/unet_h200_tail.json) put there:
- the head (GroupNorm over (C, F, H, W), SiLU, conv_out): PyTorch's GroupNorm kernel took
  0.55 ms in one call on the channels_last output, with copies around it. The head runs
  on every denoising step, the cached DeepCache steps too (10.8 ms each);
- the three nearest upsamplings: ATen's channels_last kernel, 1.0 ms for 3 calls, where
  their 0.3 GB of reads and writes need about 0.1 ms.
Compiled, the head's norm is fast mode's norm from per-channel moments fused with the SiLU
(fastsync.accel.group_norm), and each upsampling one inductor kernel before its conv. On an
H100 the CFG forward took 94.7 ms against 96.1 ms with these layers eager, and a cached
DeepCache step 9.7 ms (10.8 ms on another H100 before); a 16-frame chunk's GPU time fell
from about 1.010 to 0.985 s (bench/results/unet_h100_glue.json, e2e_h100_glue_on/off.json).

The head is two layers of the UNet itself (`conv_norm_out`, `conv_out`, the checkpoint's
names), so it is no module of its own. `attach_head` makes one that shares them and routes
`unet.head` through it; it stays out of the UNet's module tree, so the state dict, `.to()`
and `modules()` see only the UNet's own layers, once.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fastsync.models.resnet import Upsample


class Head(nn.Module):
    """The UNet's head, `UNet3DConditionModel.head`, over the UNet's own two layers."""

    def __init__(self, norm: nn.GroupNorm, conv: nn.Module):
        super().__init__()
        self.norm = norm
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.silu(self.norm(x)))  # (B, C0, F, H, W) -> (B, out_channels, F, H, W)


def attach_head(unet: nn.Module) -> Head:
    """`unet.head(x)` calls a Head over the UNet's `conv_norm_out` and `conv_out` from now on
    (the same values); returns it. Attaching twice returns the first one."""
    head = unet.__dict__.get("head")
    if not isinstance(head, Head):
        head = Head(unet.conv_norm_out, unet.conv_out)
        # an instance attribute, not a submodule: it shadows the method and leaves the
        # module tree (and with it the state dict) as the checkpoint has it
        unet.__dict__["head"] = head
    return head


def glue_modules(unet: nn.Module) -> list[nn.Module]:
    """The upsamplers and the head (attached here if it is not yet): the regions between the blocks."""
    return [m for m in unet.modules() if isinstance(m, Upsample)] + [attach_head(unet)]
