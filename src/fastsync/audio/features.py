"""Audio features for LatentSync: whisper-encoder states at 50 per second, cut per video frame.

Steps (REFERENCE.md, "Audio features"):
1. log-mel of the whole file (global max), 100 frames per second;
2. 30 s windows of 3000 mel frames, the last zero-padded, all run through the encoder
   (batched); from each window keep the first (its real frames // 2) positions and
   concatenate: features (T, 5, 384), 50 per second;
3. per video frame i, the 10 feature rows around int(i * 50 / fps), clamped to the
   valid range, flattened to (50, 384).

The reference builds step 3 with a Python loop per frame; here the row indices of all
frames form one (N, 10) table and the chunks are one gather.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastsync.audio.mel import HOP_LENGTH, SAMPLE_RATE, log_mel_spectrogram
from fastsync.errors import InputError
from fastsync.models.whisper import WhisperEncoder

FEATURES_PER_SECOND = 50  # encoder positions per second: 100 mel frames/s halved by conv2
VIDEO_FPS = 25  # the reference resamples every video to 25 fps
# Video frames of context on each side of the current frame (LatentSync's `audio_feat_length`).
AUDIO_FEAT_LENGTH = (2, 2)
# Two feature rows per 25 fps video frame, over 2 + 1 + 2 frames: 10 rows.
ROWS_PER_CHUNK = 2 * (AUDIO_FEAT_LENGTH[0] + AUDIO_FEAT_LENGTH[1] + 1)
# The shortest input that yields one feature row (2 mel frames); the reference fails below it.
MIN_SAMPLES = 2 * HOP_LENGTH
# 30 s windows at once: the attention scores of one window take ~54 MB in fp32 per layer.
DEFAULT_MAX_BATCH = 8


def encode_audio(
    samples: Tensor | np.ndarray,
    encoder: WhisperEncoder,
    device: str | torch.device | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Tensor:
    """16 kHz mono samples -> features (T, n_layer + 1, width) float32 on `device`.

    `device` defaults to the encoder's; the mel is computed there too. Windows go through
    the encoder `max_batch` at a time (1 gives the reference's window-by-window order;
    the results agree to float rounding).
    """
    if device is None:
        device = encoder.conv1.weight.device
    samples = torch.as_tensor(samples, dtype=torch.float32, device=device)
    if samples.ndim != 1 or samples.shape[0] < MIN_SAMPLES:
        raise InputError(f"the audio is too short to lip-sync: {samples.shape[-1]} samples, "
                         f"need at least {MIN_SAMPLES} ({MIN_SAMPLES / SAMPLE_RATE * 1000:.0f} ms)")
    mel = log_mel_spectrogram(samples)  # (80, n_frames), normalised with the global max
    windows, keep = mel_windows(mel, encoder.n_frames)
    pieces = []
    with torch.no_grad():
        for start in range(0, windows.shape[0], max_batch):
            states = encoder(windows[start : start + max_batch])  # (b, 1500, 5, C)
            for j, window_states in enumerate(states):
                pieces.append(window_states[: keep[start + j]].float())
    return torch.cat(pieces, dim=0)


def mel_windows(mel: Tensor, window_frames: int = 3000) -> tuple[Tensor, list[int]]:
    """Cut (n_mels, n) into (W, n_mels, window_frames) windows, the last zero-padded.

    Also returns, per window, how many encoder positions to keep: half its real frames,
    rounded down. Padding is 0 in normalised log-mel units, as the reference pads.
    """
    n_mels, n_frames = mel.shape
    n_windows = math.ceil(n_frames / window_frames)
    padded = torch.zeros(n_mels, n_windows * window_frames, dtype=mel.dtype, device=mel.device)
    padded[:, :n_frames] = mel
    windows = padded.view(n_mels, n_windows, window_frames).transpose(0, 1)  # (W, n_mels, frames)
    keep = [min(window_frames, n_frames - w * window_frames) // 2 for w in range(n_windows)]
    return windows, keep


def num_chunks(num_features: int, fps: float = VIDEO_FPS) -> int:
    """Number of video frames the reference produces for `num_features` feature rows.

    Its loop appends frame i, then stops once int(i * (50 / fps)) > T: the count is the
    first such i plus one (T // 2 + 2 at 25 fps).
    """
    step = FEATURES_PER_SECOND / fps  # the reference's multiplier, rounded once as it does
    i = max(0, int(num_features / step) - 2)
    while int(i * step) <= num_features:
        i += 1
    return i + 1


def chunk_index_table(
    num_features: int, fps: float = VIDEO_FPS, frames: Tensor | np.ndarray | None = None,
    audio_feat_length: tuple[int, int] = AUDIO_FEAT_LENGTH,
) -> Tensor:
    """(N, rows) int64 feature-row indices of each video frame (all frames by default)."""
    if frames is None:
        frames = np.arange(num_chunks(num_features, fps))
    frames = np.asarray(frames, dtype=np.int64)
    # Float64 numpy division rounds exactly like the reference's Python `int(i * 50 / fps)`.
    centres = np.floor(frames * FEATURES_PER_SECOND / fps).astype(np.int64)
    before, after = audio_feat_length
    offsets = np.arange(-2 * before, 2 * (after + 1))
    rows = np.clip(centres[:, None] + offsets[None, :], 0, num_features - 1)
    return torch.from_numpy(rows)


def chunk_indices(i: int, num_features: int, fps: float = VIDEO_FPS) -> list[int]:
    """The feature rows video frame `i` uses (10 with LatentSync's context)."""
    return chunk_index_table(num_features, fps, frames=[i])[0].tolist()


def gather_chunks(features: Tensor, rows: Tensor) -> Tensor:
    """features (T, L, C), rows (N, R) -> (N, R * L, C): each frame's rows, layers inner."""
    n, r = rows.shape
    _, layers, width = features.shape
    return features[rows.to(features.device).reshape(-1)].reshape(n, r * layers, width)


def audio_chunks(features: Tensor, fps: float = VIDEO_FPS) -> Tensor:
    """(N, 50, 384) UNet audio context for every video frame the reference produces."""
    return gather_chunks(features, chunk_index_table(features.shape[0], fps))


@dataclass(frozen=True)
class AudioFeatures:
    """Encoder features of one audio file and the per-frame view the UNet consumes."""

    features: Tensor  # (T, n_layer + 1, width) float32, 50 per second
    fps: float = VIDEO_FPS

    @classmethod
    def from_samples(cls, samples: Tensor | np.ndarray, encoder: WhisperEncoder,
                     device: str | torch.device | None = None, fps: float = VIDEO_FPS) -> AudioFeatures:
        return cls(encode_audio(samples, encoder, device), fps)

    @classmethod
    def from_file(cls, path: str | Path, encoder: WhisperEncoder,
                  device: str | torch.device | None = None, fps: float = VIDEO_FPS) -> AudioFeatures:
        from fastsync.media.audio import load_audio

        return cls.from_samples(load_audio(path, SAMPLE_RATE), encoder, device, fps)

    @property
    def num_frames(self) -> int:
        """Video frames to generate: the reference's chunk count."""
        return num_chunks(self.features.shape[0], self.fps)

    def __len__(self) -> int:
        return self.num_frames

    def chunks(self, start: int = 0, stop: int | None = None) -> Tensor:
        """(stop - start, 50, 384) chunks for video frames [start, stop); stop is clamped."""
        stop = self.num_frames if stop is None else min(stop, self.num_frames)
        rows = chunk_index_table(self.features.shape[0], self.fps, frames=np.arange(start, stop))
        return gather_chunks(self.features, rows)
