"""Whisper audio encoder (OpenAI layout), the only part of Whisper LatentSync uses.

Parameter names match the `encoder.` keys of an OpenAI checkpoint's `model_state_dict`
(`checkpoints/whisper/tiny.pt`), so the official file loads unchanged; its decoder keys
are ignored.

Dtype behaviour of the reference, which this module reproduces:
- The checkpoint is fp16. The reference builds the model in fp32 and copies the fp16
  values in, so its weights are fp16 values held in fp32 (that includes the positional
  embedding, which is stored in the checkpoint and must be taken from it, not recomputed).
- On CPU it runs in fp32 (Whisper refuses fp16 there); the golden files were made so.
- On CUDA it runs in fp16 (transcribe's default): convs and linears cast their weights
  to fp16, LayerNorm and the attention softmax compute in fp32 and cast back, and the
  returned embeddings are fp16.
So `load_whisper_encoder(dtype=torch.float16)` matches the reference on CUDA and
`dtype=torch.float32` matches it on CPU. LayerNorm and softmax always run in fp32 here.
Measured against the fp32 CPU golden (demo1, max|diff| / max|golden|): CPU fp32 6.7e-7;
H100 fp32 1.0e-4 (cuDNN's default TF32 convolutions); H100 fp16 1.2e-3, the size of the
gap between the reference's own CUDA (fp16) and CPU (fp32) features.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastsync.errors import CheckpointError


@dataclass(frozen=True)
class WhisperDims:
    """Audio-side fields of an OpenAI checkpoint's `dims` (the text-side ones are not needed)."""

    n_mels: int = 80
    n_audio_ctx: int = 1500  # positions per 30 s window: 3000 mel frames halved by conv2's stride
    n_audio_state: int = 384  # width; LatentSync's UNet cross-attends to this (384 = tiny)
    n_audio_head: int = 6
    n_audio_layer: int = 4

    @classmethod
    def from_checkpoint(cls, raw: dict[str, Any]) -> WhisperDims:
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in raw]
        if missing:
            raise KeyError(f"checkpoint dims lack {missing}")
        return cls(**{n: int(raw[n]) for n in names})


TINY = WhisperDims()  # whisper-tiny: what LatentSync 1.5 / 1.6 use


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """(length, channels) positional table: sin in the first half of channels, cos in the second.

    Timescales run geometrically from 1 to `max_timescale` over channels // 2 steps.
    """
    half = channels // 2
    log_step = math.log(max_timescale) / (half - 1)
    inv_timescales = torch.exp(-log_step * torch.arange(half))
    angles = torch.arange(length)[:, None] * inv_timescales[None, :]  # (length, half)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype; the result keeps the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)  # OpenAI's layout: no key bias
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: Tensor) -> Tensor:
        batch, ctx, width = x.shape
        head_dim = width // self.n_head
        # (B, T, C) -> (B, nh, T, hs)
        q = self.query(x).view(batch, ctx, self.n_head, head_dim).transpose(1, 2)
        k = self.key(x).view(batch, ctx, self.n_head, head_dim).transpose(1, 2)
        v = self.value(x).view(batch, ctx, self.n_head, head_dim).transpose(1, 2)
        y = attention(q, k, v)  # (B, nh, T, hs)
        return self.out(y.transpose(1, 2).reshape(batch, ctx, width))


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(hs)) v, with the scores' softmax in fp32.

    The 1/sqrt(hs) factor is split as hs^-1/4 on q and on k before the product, as Whisper
    does, so fp16 scores cannot overflow before the scale is applied.
    """
    scale = q.shape[-1] ** -0.25
    scores = (q * scale) @ (k * scale).transpose(-1, -2)  # (B, nh, T, T)
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return weights @ v


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = LayerNorm32(n_state)
        # Indices 0 and 2 give the checkpoint's `mlp.0.*` / `mlp.2.*` names.
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = LayerNorm32(n_state)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.attn_ln(x))
        x = x + self.mlp(self.mlp_ln(x))
        return x


class WhisperEncoder(nn.Module):
    def __init__(self, dims: WhisperDims = TINY):
        super().__init__()
        self.dims = dims
        width = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(dims.n_audio_ctx, width))
        self.blocks = nn.ModuleList(
            [ResidualAttentionBlock(width, dims.n_audio_head) for _ in range(dims.n_audio_layer)]
        )
        # Part of the checkpoint, so it exists here; LatentSync's features are taken before it.
        self.ln_post = LayerNorm32(width)

    @property
    def n_frames(self) -> int:
        """Mel frames per window the encoder accepts (3000 = 30 s for whisper)."""
        return 2 * self.dims.n_audio_ctx

    def forward(self, mel: Tensor) -> Tensor:
        """mel (B, n_mels, 2 * n_audio_ctx) -> (B, n_audio_ctx, n_audio_layer + 1, n_audio_state).

        Slot 0 is the embedding after the positional embedding; slot j is the output of
        block j. `ln_post` is not applied: LatentSync uses none of its output.
        """
        expected = (self.dims.n_mels, self.n_frames)
        if tuple(mel.shape[1:]) != expected:
            raise ValueError(f"encoder expects mel windows of shape (B, {expected[0]}, {expected[1]}), "
                             f"got {tuple(mel.shape)}")
        mel = mel.to(self.conv1.weight.dtype)
        # 1. Two convolutions, the second halving time: (B, 80, 3000) -> (B, C, 1500).
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x))
        x = x.transpose(1, 2)  # (B, T, C)
        # 2. Fixed positional embedding; the sum is formed in fp32 as in the reference.
        x = (x.float() + self.positional_embedding.float()).to(x.dtype)
        # 3. Transformer blocks, keeping every intermediate residual stream.
        states = [x]
        for block in self.blocks:
            x = block(x)
            states.append(x)
        return torch.stack(states, dim=2)  # (B, T, n_layer + 1, C)


def load_whisper_encoder(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> WhisperEncoder:
    """Build the encoder from an OpenAI-format checkpoint (`dims` + `model_state_dict`).

    Raises CheckpointError naming the file when it is missing, unreadable, or does not hold
    a whisper encoder of consistent shape.
    """
    path = Path(path)
    hint = "use the official whisper checkpoint (e.g. ByteDance/LatentSync-1.6: whisper/tiny.pt)"
    if not path.is_file():
        raise CheckpointError("whisper checkpoint not found", path, hint=hint)
    checkpoint = _torch_load(path, hint)
    if not isinstance(checkpoint, dict) or "dims" not in checkpoint or "model_state_dict" not in checkpoint:
        raise CheckpointError("not an OpenAI whisper checkpoint (needs 'dims' and 'model_state_dict')",
                              path, hint=hint)
    try:
        dims = WhisperDims.from_checkpoint(checkpoint["dims"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"bad whisper dims: {exc}", path, hint=hint) from exc

    prefix = "encoder."
    state = {k[len(prefix):]: v for k, v in checkpoint["model_state_dict"].items() if k.startswith(prefix)}
    with torch.device("meta"):
        encoder = WhisperEncoder(dims)
    _check_state(encoder, state, path, hint)
    # assign=True keeps the checkpoint's tensors (memory-mapped where possible) instead of copying
    # into freshly allocated ones; the .to() below makes the single copy to device and dtype.
    encoder.load_state_dict(state, strict=True, assign=True)
    return encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)


def random_whisper_encoder(
    dims: WhisperDims = TINY, seed: int = 0, device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> WhisperEncoder:
    """A seeded encoder with PyTorch's default init, for --random-weights runs and tests.

    Weights are rounded through fp16 so that they behave like the official fp16 checkpoint.
    """
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        encoder = WhisperEncoder(dims)
    finally:
        torch.random.set_rng_state(generator_state)
    with torch.no_grad():
        for tensor in list(encoder.parameters()) + list(encoder.buffers()):
            tensor.copy_(tensor.half().float())
    return encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _torch_load(path: Path, hint: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # only the legacy (non-zip) format cannot be memory-mapped
            raise CheckpointError(f"could not read the checkpoint ({exc})", path, hint=hint) from exc
    except Exception as exc:
        raise CheckpointError(f"could not read the checkpoint ({type(exc).__name__}: {exc})",
                              path, hint=hint) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"could not read the checkpoint ({type(exc).__name__}: {exc})",
                              path, hint=hint) from exc


def _check_state(encoder: WhisperEncoder, state: dict[str, Tensor], path: Path, hint: str) -> None:
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"encoder keys do not match: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}",
            path, hint=hint,
        )
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"encoder.{name} has shape {tuple(state[name].shape)}, dims imply {tuple(tensor.shape)}",
                path, hint=hint,
            )
