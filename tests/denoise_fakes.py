"""Stand-ins around ChunkDenoiser for CPU tests: a cheap noise predictor and a VAE that counts its calls."""

from __future__ import annotations

import torch


def trivial_predictor(sample, t, audio, step):
    """A cheap, deterministic stand-in for the UNet that uses every input: latents, masked
    and reference latents, and each frame's audio (B*F rows in (b, f) order)."""
    batch, _, frames = sample.shape[:3]
    per_frame = audio.mean(dim=(1, 2)).view(batch, 1, frames, 1, 1)
    return 0.3 * sample[:, :4] + 0.2 * sample[:, 5:9] - 0.1 * sample[:, 9:13] + 0.05 * per_frame + t * 1e-4


class CountingVAE(torch.nn.Module):
    """The tiny VAE, recording the batch size of every encode and decode call."""

    def __init__(self, vae):
        super().__init__()
        self.vae, self.encode_sizes, self.decode_sizes = vae, [], []

    def encode(self, x):
        self.encode_sizes.append(x.shape[0])
        return self.vae.encode(x)

    def decode(self, z):
        self.decode_sizes.append(z.shape[0])
        return self.vae.decode(z)
