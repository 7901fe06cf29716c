"""Audio features for LatentSync: whisper-encoder states at 50 per second, cut per video frame.

Steps (REFERENCE.md, "Audio features"):
1. log-mel of the whole file (global max), 100 frames per second;
2. 30 s windows of 3000 mel frames, the last zero-padded, all run through the encoder;
   from each window keep the first (its real frames // 2) positions and concatenate:
   features (T, 5, 384), 50 per second;
3. per video frame i, the 10 feature rows around int(i * 50 / fps), clamped to the
   valid range, flattened to (50, 384).

The reference builds step 3 with a Python loop per frame; here the row indices of all
frames form one (N, 10) table and the chunks are one gather.

Two views give the same chunks. `AudioFeatures` holds all T rows (23 MB per minute of
audio): parity tools and tests read them. `LazyAudioFeatures`, which the job uses, holds
only the mel and encodes a window when a chunk first needs it, so its memory does not
grow with the length of the audio.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fastsync.audio.mel import HOP_LENGTH, SAMPLE_RATE, log_mel_spectrogram
from fastsync.errors import InputError
from fastsync.models.whisper import WhisperEncoder
from fastsync.transfer import upload

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
# Windows the lazy view keeps encoded. Chunks come in increasing order and one chunk's
# 10 rows can straddle a window boundary, so two are enough never to encode one twice.
CACHED_WINDOWS = 2


def normalised_mel(samples: Tensor | np.ndarray, device: str | torch.device) -> Tensor:
    """16 kHz mono samples -> (80, n_frames) log-mel on `device`, normalised with the global max.

    Raises InputError when there are too few samples for one feature row.
    """
    # as_tensor shares the memory of a float32 numpy array on the CPU: no copy of the audio.
    samples = torch.as_tensor(samples, dtype=torch.float32, device=device)
    if samples.ndim != 1 or samples.shape[0] < MIN_SAMPLES:
        raise InputError(f"the audio is too short to lip-sync: {samples.shape[-1]} samples, "
                         f"need at least {MIN_SAMPLES} ({MIN_SAMPLES / SAMPLE_RATE * 1000:.0f} ms)")
    return log_mel_spectrogram(samples)


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
    mel = normalised_mel(samples, device)  # (80, n_frames)
    windows, keep = mel_windows(mel, encoder.n_frames)
    pieces = []
    with torch.no_grad():
        for start in range(0, windows.shape[0], max_batch):
            states = encoder(windows[start : start + max_batch])  # (b, 1500, 5, C)
            for j, window_states in enumerate(states):
                pieces.append(window_states[: keep[start + j]].float())
    return torch.cat(pieces, dim=0)


def window_keep_counts(n_frames: int, window_frames: int = 3000) -> list[int]:
    """Encoder positions to keep from each window of an `n_frames` mel: half its real frames,
    rounded down (window_frames // 2 for all but the last)."""
    n_windows = math.ceil(n_frames / window_frames)
    return [min(window_frames, n_frames - w * window_frames) // 2 for w in range(n_windows)]


def mel_window(mel: Tensor, index: int, window_frames: int = 3000) -> Tensor:
    """Window `index` of (n_mels, n) as (n_mels, window_frames), zero-padded past the end.

    Padding is 0 in normalised log-mel units, as the reference pads.
    """
    window = mel[:, index * window_frames : (index + 1) * window_frames]
    return F.pad(window, (0, window_frames - window.shape[1]))


def mel_windows(mel: Tensor, window_frames: int = 3000) -> tuple[Tensor, list[int]]:
    """Cut (n_mels, n) into (W, n_mels, window_frames) windows, the last zero-padded.

    Also returns, per window, how many encoder positions to keep (`window_keep_counts`).
    """
    n_mels, n_frames = mel.shape
    keep = window_keep_counts(n_frames, window_frames)
    padded = torch.zeros(n_mels, len(keep) * window_frames, dtype=mel.dtype, device=mel.device)
    padded[:, :n_frames] = mel
    windows = padded.view(n_mels, len(keep), window_frames).transpose(0, 1)  # (W, n_mels, frames)
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
    # upload: a plain .to() would wait for the GPU work queued so far (fastsync.transfer)
    return features[upload(rows, features.device).reshape(-1)].reshape(n, r * layers, width)


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


class LazyAudioFeatures:
    """The view of `AudioFeatures`, encoding each 30 s window only when a chunk needs its rows.

    It holds the normalised mel (the global max needs the whole file first; 80 values per
    10 ms, 19 MB for 10 minutes) and the states of the `cached_windows` most recently used
    windows (1500 x 5 x 384 fp32 = 11.5 MB each), on the encoder's device. Row r of the
    concatenated features is row r % 1500 of window r // 1500: every window but the last
    keeps all its 1500 positions. Windows run through the encoder one at a time, the
    reference's order; the chunks equal `AudioFeatures`' to float rounding (batching
    changes the summation order, not the math). Asking for chunks out of order is correct
    but may encode a window again.
    """

    def __init__(self, mel: Tensor, encoder: WhisperEncoder, fps: float = VIDEO_FPS,
                 cached_windows: int = CACHED_WINDOWS):
        if cached_windows < 2:
            raise ValueError(f"cached_windows must be at least 2 (a chunk can straddle two windows), "
                             f"got {cached_windows}")
        self.mel = mel  # (n_mels, n_frames), normalised
        self.encoder = encoder
        self.fps = fps
        self.cached_windows = cached_windows
        self.window_frames = encoder.n_frames  # 3000 mel frames
        self.rows_per_window = self.window_frames // 2  # 1500 encoder positions
        self.keep = window_keep_counts(mel.shape[1], self.window_frames)
        self.num_features = sum(self.keep)  # T, known without encoding
        self.windows_encoded = 0  # encoder calls so far: one window each
        self._states: OrderedDict[int, Tensor] = OrderedDict()  # window -> (keep, L, C), oldest first

    @classmethod
    def from_samples(cls, samples: Tensor | np.ndarray, encoder: WhisperEncoder,
                     device: str | torch.device | None = None, fps: float = VIDEO_FPS) -> LazyAudioFeatures:
        """The mel is computed now, on `device` (default: the encoder's); nothing is encoded yet."""
        if device is None:
            device = encoder.conv1.weight.device
        return cls(normalised_mel(samples, device), encoder, fps)

    @property
    def num_frames(self) -> int:
        """Video frames to generate: the reference's chunk count."""
        return num_chunks(self.num_features, self.fps)

    def __len__(self) -> int:
        return self.num_frames

    @property
    def cached(self) -> list[int]:
        """Indices of the windows whose states are held now, least recently used first."""
        return list(self._states)

    def chunks(self, start: int = 0, stop: int | None = None) -> Tensor:
        """(stop - start, 50, 384) float32 chunks for video frames [start, stop); stop is clamped."""
        stop = self.num_frames if stop is None else min(stop, self.num_frames)
        rows = chunk_index_table(self.num_features, self.fps, frames=np.arange(start, stop))  # (N, 10)
        if rows.numel() == 0:
            dims = self.encoder.dims
            return torch.empty(0, rows.shape[1] * (dims.n_audio_layer + 1), dims.n_audio_state,
                               device=self.mel.device)
        first, last = int(rows.min()) // self.rows_per_window, int(rows.max()) // self.rows_per_window
        needed = range(first, last + 1)
        states = [self._window(w, needed) for w in needed]
        features = states[0] if len(states) == 1 else torch.cat(states)  # rows from window `first` on
        chunks = gather_chunks(features, rows - first * self.rows_per_window)
        self._drop_stale(range(0), self.cached_windows)  # a request wider than the cache is over
        return chunks

    def to_eager(self) -> AudioFeatures:
        """Every window encoded and concatenated, without touching the cache: (T, L, C) as
        `encode_audio(..., max_batch=1)` gives."""
        features = torch.cat([self._encode(w) for w in range(len(self.keep))])
        return AudioFeatures(features, self.fps)

    def _window(self, index: int, needed: range) -> Tensor:
        if index in self._states:
            self._states.move_to_end(index)
            return self._states[index]
        # Make room first, so that at most `cached_windows` windows are alive while one is
        # encoded (more only while one request needs more).
        self._drop_stale(needed, self.cached_windows - 1)
        self._states[index] = self._encode(index)
        return self._states[index]

    def _drop_stale(self, needed: range, limit: int) -> None:
        """Drop the least recently used windows outside `needed` until at most `limit` are held."""
        stale = [w for w in self._states if w not in needed]  # least recently used first
        for w in stale[: max(0, len(self._states) - limit)]:
            del self._states[w]

    def _encode(self, index: int) -> Tensor:
        window = mel_window(self.mel, index, self.window_frames)  # (n_mels, 3000)
        with torch.no_grad():
            states = self.encoder(window[None])[0]  # (1500, L, C): fp16 on CUDA with an fp16 encoder
        self.windows_encoded += 1
        return states[: self.keep[index]].float()
