"""Whisper's log-mel spectrogram of a whole file, computed in 30 s blocks.

The 80-band filterbank is built here rather than shipped: triangular filters on the
Slaney mel scale (linear below 1 kHz, logarithmic above), each scaled to unit area
("slaney" normalisation). That is what `librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)`
returns with its defaults, i.e. the table Whisper stores in `mel_filters.npz`; the golden
test proves the match.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms hop: 100 mel frames per second
N_MELS = 80
N_FREQS = N_FFT // 2 + 1  # 201 one-sided STFT bins

# Slaney mel scale: 3 mels per 200 Hz up to 1 kHz (so 1 kHz = 15 mel), then a constant
# ratio of 6.4 ** (1 / 27) per mel above it.
_LINEAR_HZ_PER_MEL = 200.0 / 3.0
_BREAK_HZ = 1000.0
_BREAK_MEL = _BREAK_HZ / _LINEAR_HZ_PER_MEL  # 15.0
_MELS_PER_LOG_HZ = 27.0 / math.log(6.4)

# Dynamic range kept below the loudest bin, in log10 units (80 dB), and the affine map
# Whisper applies afterwards to bring the values to roughly [-1, 1].
LOG_RANGE = 8.0
LOG_FLOOR = 1e-10
# STFT frames per block: 30 s, so the complex spectrum of a block is 201 x 3000 x 8 B = 4.8 MB
# however long the file (a whole 10-minute file's would be 96 MB, plus its |.|^2 copies).
BLOCK_FRAMES = 3000


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _LINEAR_HZ_PER_MEL
    logarithmic = _BREAK_MEL + np.log(np.maximum(hz, _BREAK_HZ) / _BREAK_HZ) * _MELS_PER_LOG_HZ
    return np.where(hz < _BREAK_HZ, linear, logarithmic)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _LINEAR_HZ_PER_MEL
    logarithmic = _BREAK_HZ * np.exp((np.maximum(mel, _BREAK_MEL) - _BREAK_MEL) / _MELS_PER_LOG_HZ)
    return np.where(mel < _BREAK_MEL, linear, logarithmic)


def slaney_mel_filterbank(
    sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS
) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32 triangular filters, unit area each, from 0 Hz to Nyquist.

    Computed in float64 and rounded once at the end.
    """
    bin_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)  # centre frequency of each STFT bin
    # n_mels + 2 edges evenly spaced in mel: filter m rises from edge m, peaks at m + 1, falls to m + 2.
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    widths_hz = np.diff(edges_hz)  # (n_mels + 1,)
    left, right = edges_hz[:-2, None], edges_hz[2:, None]
    rising = (bin_hz[None, :] - left) / widths_hz[:-1, None]  # 0 at the left edge, 1 at the peak
    falling = (right - bin_hz[None, :]) / widths_hz[1:, None]  # 1 at the peak, 0 at the right edge
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalisation: divide by half the base width so every triangle has unit area in Hz.
    area_norm = 2.0 / (edges_hz[2:] - edges_hz[:-2])
    return (triangles * area_norm[:, None]).astype(np.float32)


@lru_cache(maxsize=8)
def _filterbank_tensor(device: torch.device) -> torch.Tensor:
    return torch.from_numpy(slaney_mel_filterbank()).to(device)


@lru_cache(maxsize=8)
def _hann_window(device: torch.device) -> torch.Tensor:
    # Periodic Hann (torch's default), as Whisper uses.
    return torch.hann_window(N_FFT, device=device)


def mel_frame_count(num_samples: int) -> int:
    """Mel frames produced for `num_samples` samples: the centred STFT's last frame is dropped."""
    return num_samples // HOP_LENGTH


def log_mel_spectrogram(samples: torch.Tensor, block_frames: int = BLOCK_FRAMES) -> torch.Tensor:
    """(80, n_samples // 160) float32 Whisper log-mel of 16 kHz mono `samples` (1-D).

    The clamp to (max - 8) uses the maximum over the WHOLE input, as the reference does
    before it cuts the spectrogram into 30 s windows; calling this per window would
    change the result wherever a window is quieter than the loudest one. So the log10 mel
    is computed `block_frames` frames at a time, and normalised once all blocks are in.
    Each STFT frame depends only on its own 400 samples, so the blocks give the whole-file
    STFT's frames (bit for bit on the CPU; tests/test_audio_features.py holds them to 1e-6).
    """
    if samples.ndim != 1:
        raise ValueError(f"expected 1-D mono samples, got shape {tuple(samples.shape)}")
    if samples.shape[0] <= N_FFT // 2:
        # The reference's torch.stft reflect-pads n_fft / 2 samples, which needs more than that.
        raise ValueError(f"need more than {N_FFT // 2} samples for a spectrogram, got {samples.shape[0]}")
    samples = samples.float()
    n_frames = mel_frame_count(samples.shape[0])
    log_mel = torch.empty(N_MELS, n_frames, device=samples.device)
    for start in range(0, n_frames, block_frames):
        stop = min(start + block_frames, n_frames)
        log_mel[:, start:stop] = _log10_mel(samples, start, stop)
    torch.maximum(log_mel, log_mel.max() - LOG_RANGE, out=log_mel)
    return log_mel.add_(4.0).div_(4.0)


def _log10_mel(samples: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """(80, stop - start) log10 mel power of frames [start, stop) of the centred STFT."""
    # Frame j of torch.stft(center=True) covers samples [j * 160 - 200, j * 160 + 200).
    span = _reflected(samples, start * HOP_LENGTH - N_FFT // 2, (stop - 1) * HOP_LENGTH + N_FFT // 2)
    stft = torch.stft(span, N_FFT, HOP_LENGTH, window=_hann_window(samples.device), center=False,
                      return_complex=True)  # (201, stop - start)
    mel = _filterbank_tensor(samples.device) @ (stft.abs() ** 2)  # (80, stop - start)
    return torch.clamp(mel, min=LOG_FLOOR).log10()


def _reflected(samples: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """samples[lo:hi], where indices before 0 or past the end mirror about the end samples
    (excluding them), as torch.stft's reflect padding does: x[-k] = x[k], x[n-1+k] = x[n-1-k]."""
    n = samples.shape[0]
    if lo >= 0 and hi <= n:
        return samples[lo:hi]
    index = torch.arange(lo, hi, device=samples.device).abs()
    index = torch.where(index >= n, 2 * (n - 1) - index, index)
    return samples[index]
