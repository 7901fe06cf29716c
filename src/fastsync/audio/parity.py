"""Golden check for the audio path: `whisper_<case>_{whisper.pt,features.pt}`.

Runs decode -> log-mel -> encoder -> chunking on the case's audio file with the case's
checkpoint, in float32 on the CPU as the golden files were made, and compares. The
features come from the eager path; the sampled chunks from the lazy one the job uses.
Tolerances (golden/README.md): features and chunks `max|diff| <= 1e-3 * max|golden|`;
the chunk count and every chunk's row indices exact.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastsync.audio.features import LazyAudioFeatures, chunk_index_table, encode_audio, num_chunks
from fastsync.media.audio import load_audio
from fastsync.models.whisper import load_whisper_encoder
from fastsync.tools.parity import Metric

REL_TOL = 1e-3


def check_whisper_case(case: str, files: dict[str, Path]) -> list[Metric]:
    golden = torch.load(files["features.pt"], map_location="cpu", weights_only=True)
    audio_path = Path(files["features.pt"]).parent / golden["audio_file"]
    encoder = load_whisper_encoder(files["whisper.pt"], device="cpu", dtype=torch.float32)
    samples = load_audio(audio_path, allow_silent=True)
    ours = encode_audio(samples, encoder, device="cpu")
    expected = golden["features"].float()

    metrics = [Metric("features_rel_max_err", _rel_err(ours, expected), REL_TOL)]

    count = num_chunks(ours.shape[0])
    metrics.append(Metric("num_chunks_diff", float(abs(count - int(golden["num_chunks"]))), 0.0, rule="eq"))

    ours_rows = chunk_index_table(ours.shape[0]).tolist()
    golden_rows = [list(map(int, row)) for row in golden["chunk_indices"]]
    mismatches = sum(a != b for a, b in zip(ours_rows, golden_rows)) + abs(len(ours_rows) - len(golden_rows))
    metrics.append(Metric("chunk_index_mismatches", float(mismatches), 0.0, rule="eq"))

    view = LazyAudioFeatures.from_samples(samples, encoder, device="cpu")
    errors = []
    for frame, chunk in golden["sampled_chunks"].items():
        frame = int(frame)
        if frame >= view.num_frames:
            errors.append(float("inf"))
            continue
        errors.append(_rel_err(view.chunks(frame, frame + 1)[0], chunk.float()))
    metrics.append(Metric("sampled_chunk_rel_err", max(errors) if errors else float("nan"), REL_TOL))
    return metrics


def _rel_err(ours: torch.Tensor, expected: torch.Tensor) -> float:
    """max|ours - expected| / max|expected|; inf when the shapes differ."""
    if ours.shape != expected.shape:
        return float("inf")
    return float((ours - expected).abs().max() / expected.abs().max())
