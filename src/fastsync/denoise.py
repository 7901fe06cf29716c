"""One 16-frame chunk through the latent diffusion: the GPU hot path.

Per chunk (REFERENCE.md, "Video side"):
  1. faces -> [-1, 1]; masked faces = faces * mask
  2. VAE-encode masked and reference faces (a *sample* of the posterior, scaled)
  3. DDIM steps with classifier-free guidance, batch = [zero audio, audio]
  4. VAE-decode; keep decoded pixels inside the mouth region, the reference face outside

Random numbers are drawn explicitly, in the reference's order (initial noise once per
job; then per chunk the masked-face posterior noise, then the reference-face noise),
so that every execution strategy — batched, graphed, compiled — consumes the same
noise and stays comparable with the reference mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastsync.accel.repeats import RepeatedFaces
from fastsync.components import VAE_DOWNSCALE, VAE_SCALING_FACTOR, VAE_SHIFT_FACTOR
from fastsync.transfer import LaunchThrottle, upload


@dataclass(frozen=True)
class SamplingOptions:
    steps: int = 20
    guidance: float = 1.5  # pred = uncond + guidance * (audio - uncond)
    seed: int = 1247  # the reference's default
    deepcache_interval: int = 3  # 0 or 1 = off
    num_frames: int = 16  # frames per chunk: the UNet's temporal window during training

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.deepcache_interval < 0:
            raise ValueError(f"deepcache interval must be >= 0, got {self.deepcache_interval}")
        if not 1 <= self.num_frames <= 24:
            raise ValueError("num_frames must be within the motion module's 24-frame position table")


# A callable that predicts noise: (sample (B,13,F,h,w), t (0-dim), audio (B*F,50,384), step_index) -> (B,4,F,h,w)
# predict(model_input, t, audio, step): every call's batch is a CFG pair, the two halves of
# model_input equal and the first half's audio all zeros (what fast mode's cfg_pair relies on).
NoisePredictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


class ChunkDenoiser:
    """Holds the per-job state (generator, initial noise) and denoises chunk after chunk."""

    def __init__(
        self,
        predict: NoisePredictor,
        vae,
        scheduler,
        mask: torch.Tensor,  # (res, res) float in [0, 1]: 1 = keep the reference face
        options: SamplingOptions,
        *,
        device: torch.device,
        dtype: torch.dtype,
        batch_vae: bool = False,
        vae_micro_batch: int = 0,
        on_chunk_start: Callable[[], None] | None = None,
        max_queued: int = 0,
        repeated_faces: bool = False,
    ):
        self.predict = predict
        self.vae = vae
        self.scheduler = scheduler
        self.options = options
        self.device = device
        self.dtype = dtype
        self.batch_vae = batch_vae
        # 0 = whole chunk per VAE call (the reference). A 512 px frame's VAE activations
        # take ~0.3 GB, so micro-batches cap peak memory; frames are independent in the
        # 2D VAE, so the split changes nothing but the order of float rounding.
        self.vae_micro_batch = vae_micro_batch
        self.on_chunk_start = on_chunk_start
        # fast mode: how many steps / VAE micro-batches may be queued ahead of the GPU
        self.throttle = LaunchThrottle(device, max_queued)
        # fast mode: equal consecutive faces (a photo, a loop's turns) encoded once (accel.repeats)
        self.repeats = RepeatedFaces() if repeated_faces else None
        res = mask.shape[-1]
        self.latent_size = res // VAE_DOWNSCALE
        self.mask = mask.to(device=device, dtype=dtype)[None, None]  # (1, 1, res, res)
        # The UNet's mask channel: nearest-neighbour down to the latent grid (torch's default mode).
        self.mask_latent = F.interpolate(self.mask, size=(self.latent_size, self.latent_size))
        self.generator = torch.Generator(device=device).manual_seed(options.seed)
        scheduler.set_timesteps(options.steps, device=device)
        self.timesteps = scheduler.timesteps
        # ONE latent frame of noise for the whole video, repeated over frames (reference behaviour).
        shape = (1, 4, 1, self.latent_size, self.latent_size)
        noise = torch.randn(shape, generator=self.generator, device=device, dtype=dtype)
        self.initial_latent = noise * scheduler.init_noise_sigma

    # -- VAE -------------------------------------------------------------------------------
    def _posterior_sample(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        eps = torch.randn(mean.shape, generator=self.generator, device=self.device, dtype=mean.dtype)
        return mean + std * eps

    def skip(self, frames: int) -> None:
        """Consume the random numbers a chunk of `frames` frames draws, without denoising it:
        a job's chunks denoised on another device (fastsync.job_devices) leave this
        generator where denoising them here would have left it. Only the VAE posterior
        draws per chunk, two (F, 4, h, w) tensors in the VAE's dtype (fp16 fast mode,
        ChunkDenoiser's dtype either way); the values are not needed, only the state."""
        shape = (frames, 4, self.latent_size, self.latent_size)
        for _ in range(2):  # the masked faces', then the reference faces'
            torch.randn(shape, generator=self.generator, device=self.device, dtype=self.dtype)

    def _micro_batches(self, x: torch.Tensor, fn) -> list:
        """fn over fixed-size slices of x; a short last slice is zero-padded and the padding
        dropped, so compiled VAE regions always see one shape (frames are independent)."""
        if not self.vae_micro_batch:
            return [fn(x)]
        size, out = self.vae_micro_batch, []
        for part in x.split(size):
            n = part.shape[0]
            if n < size:
                part = torch.cat([part, part.new_zeros((size - n, *part.shape[1:]))])
            out.append(fn(part)[:n])
            self.throttle.mark()
        return out

    def _posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the VAE posterior for (N, 3, H, W) pixels, in micro-batches."""
        def moments(part):  # (n, 2, C, h, w): frames first, so micro-batches slice on dim 0
            dist = self.vae.encode(part).latent_dist
            return torch.stack([dist.mean, dist.std], dim=1)

        stacked = torch.cat(self._micro_batches(pixels, moments))
        return stacked[:, 0], stacked[:, 1]

    def _moments(self, pixels: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(mean, std) of each (F,3,H,W) tensor; all of them in one batch when batch_vae is set."""
        if self.batch_vae:
            mean, std = self._posterior(torch.cat(pixels))
            return list(zip(mean.chunk(len(pixels)), std.chunk(len(pixels))))
        return [self._posterior(p) for p in pixels]

    def _repeated_moments(self, faces: torch.Tensor, pixels: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """_moments, with each run of equal faces encoded once (fastsync.accel.repeats)."""
        starts, owners, carried = self.repeats.plan(faces)
        if len(starts) == len(owners):  # nothing repeats
            moments = self._moments(pixels)
        else:
            # small index lists, uploaded without waiting for the device (a pageable copy would)
            encoded = self._moments([p.index_select(0, upload(torch.tensor(starts), self.device))
                                     for p in pixels]) if starts else [None] * len(pixels)
            rows = upload(torch.tensor(owners), self.device)
            moments = []
            for kept, new in zip(self.repeats.last_moments if carried else [None] * len(pixels), encoded):
                parts = [pair for pair in (kept, new) if pair is not None]
                moments.append(tuple(torch.cat([pair[j] for pair in parts]).index_select(0, rows) for j in (0, 1)))
        self.repeats.remember(faces[-1], moments)
        return moments

    def _encode(self, pixels: list[torch.Tensor], moments=None) -> list[torch.Tensor]:
        """Encode each (F,3,H,W) tensor, from its (mean, std) where `moments` gives them."""
        moments = self._moments(pixels) if moments is None else moments
        # Noise is drawn per input in order, exactly as separate `latent_dist.sample()` calls would.
        return [(self._posterior_sample(m, s) - VAE_SHIFT_FACTOR) * VAE_SCALING_FACTOR for m, s in moments]

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents / VAE_SCALING_FACTOR + VAE_SHIFT_FACTOR
        return torch.cat(self._micro_batches(latents, lambda part: self.vae.decode(part).sample))

    # -- one chunk -------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, faces: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """faces (F, 3, res, res) uint8 aligned faces; audio (F, 50, 384) -> (F, 3, res, res) in [-1, 1]."""
        if self.on_chunk_start is not None:
            self.on_chunk_start()
        frames = faces.shape[0]
        pixels = upload(faces, self.device).to(self.dtype) / 127.5 - 1.0  # (F, 3, res, res), Normalize(0.5, 0.5)
        masked = pixels * self.mask
        moments = None
        if self.repeats is not None and faces.device.type == "cpu":
            moments = self._repeated_moments(faces, [masked, pixels])
        masked_latents, ref_latents = self._encode([masked, pixels], moments)  # (F, 4, h, w) each

        def video(x):  # (F, C, h, w) -> (2, C, F, h, w): one batch entry per CFG branch
            return x.permute(1, 0, 2, 3)[None].expand(2, -1, -1, -1, -1)

        mask_channel = self.mask_latent.expand(frames, -1, -1, -1)  # (F, 1, h, w)
        condition = torch.cat([video(mask_channel), video(masked_latents), video(ref_latents)], dim=1)
        audio = upload(audio, self.device).to(self.dtype)
        audio_cfg = torch.cat([torch.zeros_like(audio), audio])  # (2F, 50, 384): [unconditional, audio]

        latents = self.initial_latent.expand(-1, -1, frames, -1, -1).contiguous()  # (1, 4, F, h, w)
        for step, t in enumerate(self.timesteps):
            model_input = self.scheduler.scale_model_input(torch.cat([latents] * 2), t)
            model_input = torch.cat([model_input, condition], dim=1)  # (2, 13, F, h, w)
            noise_uncond, noise_audio = self.predict(model_input, t, audio_cfg, step).chunk(2)
            noise = noise_uncond + self.options.guidance * (noise_audio - noise_uncond)
            latents = self.scheduler.step(noise, t, latents).prev_sample
            self.throttle.mark()

        decoded = self._decode(latents[0].permute(1, 0, 2, 3))  # (F, 3, res, res)
        keep = self.mask  # 1 outside the mouth: keep the reference pixels there
        return decoded * (1 - keep) + pixels * keep
