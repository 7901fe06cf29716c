"""Whisper features: golden parity, the chunking rule, the mel filterbank, the encoder loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastsync.audio.features import (
    AudioFeatures,
    LazyAudioFeatures,
    audio_chunks,
    chunk_index_table,
    chunk_indices,
    encode_audio,
    num_chunks,
)
from fastsync.audio.mel import hz_to_mel, log_mel_spectrogram, mel_to_hz, slaney_mel_filterbank
from fastsync.audio.parity import check_whisper_case
from fastsync.errors import CheckpointError, InputError
from fastsync.models.whisper import WhisperDims, load_whisper_encoder, random_whisper_encoder

torch.set_num_threads(1)

SMALL = WhisperDims(n_audio_state=64, n_audio_head=2, n_audio_layer=2)  # fast stand-in, same windowing


def whisper_cases(golden_dir):
    cases = sorted(golden_dir.glob("whisper_*_whisper.pt"))
    assert cases, f"no whisper golden case in {golden_dir}"
    return [(p.name[len("whisper_") : -len("_whisper.pt")], p) for p in cases]


def test_golden_whisper_parity(golden_dir):
    for case, path in whisper_cases(golden_dir):
        files = {"whisper.pt": path, "features.pt": path.with_name(f"whisper_{case}_features.pt")}
        metrics = check_whisper_case(case, files)
        assert {m.name for m in metrics} == {
            "features_rel_max_err", "num_chunks_diff", "chunk_index_mismatches", "sampled_chunk_rel_err"
        }
        assert all(m.passed for m in metrics), [m.describe() for m in metrics]


# --- chunking: against a plain loop written from REFERENCE.md step 4 ---------------------------


def slow_chunk_rows(T: int) -> list[list[int]]:
    rows, i = [], 0
    while True:
        centre = int(i * 50 / 25)
        rows.append([min(max(r, 0), T - 1) for r in range(centre - 4, centre + 6)])
        if int(2 * i) > T:  # stop after the first frame whose int(2 i) exceeds T
            return rows
        i += 1


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 7, 10, 11, 100, 479, 480, 481, 1500, 1501, 3001])
def test_chunk_count_and_rows_match_slow_loop(T):
    expected = slow_chunk_rows(T)
    assert num_chunks(T) == len(expected) == T // 2 + 2
    assert chunk_index_table(T).tolist() == expected
    for i in {0, 1, len(expected) // 2, len(expected) - 1}:
        assert chunk_indices(i, T) == expected[i]


def test_audio_chunks_gather_layers_inner():
    T = 23
    features = torch.randn(T, 5, 384)
    chunks = audio_chunks(features)
    rows = slow_chunk_rows(T)
    assert chunks.shape == (len(rows), 50, 384)
    for i, frame_rows in enumerate(rows):
        expected = torch.cat([features[r] for r in frame_rows], dim=0)  # 10 x (5, 384)
        assert torch.equal(chunks[i], expected)
    view = AudioFeatures(features)
    assert len(view) == len(rows)
    assert torch.equal(view.chunks(3, 7), chunks[3:7])
    assert torch.equal(view.chunks(len(rows) - 2, len(rows) + 5), chunks[-2:])


# --- mel -----------------------------------------------------------------------------------


def test_slaney_mel_scale_points():
    assert hz_to_mel(0.0) == 0.0
    assert hz_to_mel(1000.0) == pytest.approx(15.0)
    assert hz_to_mel(500.0) == pytest.approx(7.5)  # linear below 1 kHz
    assert hz_to_mel(6400.0) == pytest.approx(15.0 + 27.0)  # 27 mels per factor 6.4 above it
    hz = np.array([0.0, 50.0, 999.0, 1000.0, 1234.5, 8000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-12, atol=1e-9)


def test_mel_filterbank_properties():
    fb = slaney_mel_filterbank()
    assert fb.shape == (80, 201) and fb.dtype == np.float32
    assert (fb >= 0).all()
    assert (fb.max(axis=1) > 0).all()  # no empty filter
    # Peaks move up in frequency with the filter index.
    assert (np.diff(fb.argmax(axis=1)) >= 0).all()
    # Slaney area normalisation: a triangle's height is 2 / (its base width in Hz), so each
    # filter's area is 1; summing over the 40 Hz bins approximates it, closely once the
    # filters span many bins (the top ones cover ~16).
    areas = fb.sum(axis=1) * (16000 / 400)
    np.testing.assert_allclose(areas, 1.0, rtol=0.08)
    np.testing.assert_allclose(areas[-30:], 1.0, rtol=0.02)
    # Nothing beyond Nyquist's neighbour: the last bin sits on the top edge, weight 0.
    assert fb[:, -1].max() == 0


def test_log_mel_uses_the_global_max():
    gen = torch.Generator().manual_seed(0)
    loud = torch.randn(16000, generator=gen) * 0.5
    quiet = torch.randn(16000, generator=gen) * 1e-4
    whole = log_mel_spectrogram(torch.cat([loud, quiet]))
    assert whole.shape == (80, 200)
    floor = whole.max() - 2.0  # (max - 8 + 4) / 4 in normalised units
    assert torch.isclose(whole.min(), floor)
    # Computed alone, the quiet half would have its own (much lower) floor.
    alone = log_mel_spectrogram(quiet)
    assert alone.min() < floor - 0.25


def whole_file_log_mel(samples: torch.Tensor) -> torch.Tensor:
    """The plain form: one torch.stft over the whole file, as the reference computes it."""
    from fastsync.audio.mel import _filterbank_tensor, _hann_window

    stft = torch.stft(samples, 400, 160, window=_hann_window(samples.device), center=True,
                      pad_mode="reflect", return_complex=True)
    mel = _filterbank_tensor(samples.device) @ (stft[:, :-1].abs() ** 2)  # the last frame is dropped
    log_mel = torch.clamp(mel, min=1e-10).log10()
    log_mel = torch.maximum(log_mel, log_mel.max() - 8.0)
    return (log_mel + 4.0) / 4.0


# The last frame of a centred STFT reaches 40 samples past the n // 160 frames' end: lengths
# with n % 160 < 40 need the right reflection, the others do not. 201 is the shortest input.
@pytest.mark.parametrize("n", [201, 330, 16000 * 3 + 10, 16000 * 3 + 100, 16000 * 70 + 37, 16000 * 70 + 150])
def test_blockwise_log_mel_equals_whole_file_stft(n):
    gen = torch.Generator().manual_seed(n)
    # Loud start, quiet end: the clamp floor comes from the first block only.
    samples = torch.randn(n, generator=gen) * torch.logspace(0, -4, n)
    expected = whole_file_log_mel(samples)
    for block_frames in (1, 7, 3000, 10**6):
        ours = log_mel_spectrogram(samples, block_frames=block_frames)
        assert ours.shape == expected.shape == (80, n // 160)
        # Bit-identical on the CPU except with 1-frame blocks, where the filterbank product
        # becomes a matrix-vector one and differs by 1 ulp (1.2e-7 at values near 1).
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


# --- encoder and windows -------------------------------------------------------------------


def slow_encode(samples: torch.Tensor, encoder) -> torch.Tensor:
    """Window by window, as REFERENCE.md step 3 describes it."""
    mel = log_mel_spectrogram(samples)
    kept = []
    for seek in range(0, mel.shape[1], 3000):
        window = mel[:, seek : seek + 3000]
        real = window.shape[1]
        window = F.pad(window, (0, 3000 - real))
        with torch.no_grad():
            states = encoder(window[None])[0]  # (1500, L + 1, C)
        kept.append(states[: real // 2])
    return torch.cat(kept)


def test_multi_window_encoding_matches_window_by_window():
    encoder = random_whisper_encoder(SMALL, seed=3)
    gen = torch.Generator().manual_seed(1)
    seconds = 61.7  # three windows, the last partial with an odd frame count
    n = int(seconds * 16000) + 70
    samples = torch.randn(n, generator=gen) * torch.linspace(0.8, 0.01, n)  # later windows quieter
    n_frames = samples.shape[0] // 160
    expected_T = 1500 + 1500 + (n_frames - 6000) // 2
    slow = slow_encode(samples, encoder)
    assert slow.shape == (expected_T, 3, 64)
    batched = encode_audio(samples, encoder, max_batch=8)
    one_by_one = encode_audio(samples, encoder, max_batch=1)
    scale = slow.abs().max()
    assert (batched - slow).abs().max() <= 1e-5 * scale
    assert (one_by_one - slow).abs().max() <= 1e-5 * scale


# --- lazy features: the view the job uses -------------------------------------------------


@pytest.fixture(scope="module")
def long_audio():
    """70.3 s of non-silent noise: windows of 1500, 1500 and 515 rows (T = 3515), and a
    random encoder; with the eager features (8 windows per call) to compare with."""
    encoder = random_whisper_encoder(SMALL, seed=5)
    gen = torch.Generator().manual_seed(2)
    n = int(70.3 * 16000) + 70
    samples = (torch.randn(n, generator=gen) * torch.linspace(0.8, 0.05, n)).numpy()
    return samples, encoder, AudioFeatures.from_samples(samples, encoder)


# Eager features run 3 windows in one batch, the lazy ones one at a time: the summation
# order differs, not the math (the multi-window test above holds both to this bound).
def assert_close_to(ours: torch.Tensor, expected: torch.Tensor, scale: torch.Tensor) -> None:
    assert ours.shape == expected.shape and ours.dtype == expected.dtype == torch.float32
    error = float((ours - expected).abs().max())
    assert error <= 1e-5 * float(scale), (error, float(scale))


def test_lazy_features_match_eager_chunk_by_chunk(long_audio):
    samples, encoder, eager = long_audio
    assert eager.features.shape[0] == 3515
    lazy = LazyAudioFeatures.from_samples(samples, encoder)
    # The counts are known before anything is encoded.
    assert lazy.num_features == 3515 and lazy.num_frames == len(lazy) == eager.num_frames == 1759
    assert lazy.windows_encoded == 0 and lazy.cached == []
    scale = eager.features.abs().max()
    step = 16  # the job's chunk length; chunk 46 (frames 736-751) straddles rows 1499 | 1500
    for start in range(0, lazy.num_frames, step):
        assert_close_to(lazy.chunks(start, start + step), eager.chunks(start, start + step), scale)
        assert len(lazy.cached) <= 2
    assert lazy.windows_encoded == 3  # each window once, in order
    assert lazy.cached == [1, 2]


def test_lazy_chunks_straddle_windows_and_reach_the_partial_last_one(long_audio):
    samples, encoder, eager = long_audio
    lazy = LazyAudioFeatures.from_samples(samples, encoder)
    scale = eager.features.abs().max()
    # Frame 750 centres on row 1500: frames 748-751 take rows from both sides of row 1499 | 1500.
    assert_close_to(lazy.chunks(745, 755), eager.chunks(745, 755), scale)
    assert lazy.cached == [0, 1] and lazy.windows_encoded == 2
    # Rows 2996-3005: windows 1 and 2 (the partial one).
    assert_close_to(lazy.chunks(1500, 1501), eager.chunks(1500, 1501), scale)
    assert lazy.cached == [1, 2] and lazy.windows_encoded == 3
    # The last frames, their rows clamped to T - 1; stop is clamped as in the eager view.
    assert_close_to(lazy.chunks(1750, 2000), eager.chunks(1750, 1759), scale)
    assert lazy.windows_encoded == 3
    assert lazy.chunks(7, 7).shape == eager.chunks(7, 7).shape == (0, 30, 64)
    # Out of order is still right; the dropped window is encoded again, and only two stay.
    assert_close_to(lazy.chunks(0, 3), eager.chunks(0, 3), scale)
    assert lazy.windows_encoded == 4 and lazy.cached == [2, 0]


def test_lazy_features_hold_at_most_two_windows(long_audio):
    samples, encoder, eager = long_audio
    lazy = LazyAudioFeatures.from_samples(samples, encoder)
    alive = []
    encode = lazy._encode

    def counting_encode(index):
        alive.append(len(lazy.cached))  # windows held while this one is encoded
        return encode(index)

    lazy._encode = counting_encode
    # One request spanning all three windows needs them all at once; once served, two stay.
    assert_close_to(lazy.chunks(), eager.chunks(), eager.features.abs().max())
    assert alive == [0, 1, 2] and lazy.cached == [1, 2]
    # Going back to window 0 drops the least recently used one before encoding it.
    lazy.chunks(0, 1)
    assert alive == [0, 1, 2, 1] and lazy.cached == [2, 0]
    with pytest.raises(ValueError, match="at least 2"):
        LazyAudioFeatures(lazy.mel, encoder, cached_windows=1)


def test_lazy_to_eager_is_window_by_window_encoding(long_audio):
    samples, encoder, _ = long_audio
    lazy = LazyAudioFeatures.from_samples(samples, encoder)
    expected = encode_audio(samples, encoder, max_batch=1)
    # Same windows, same order: equal up to kernels that may differ with the input's layout.
    torch.testing.assert_close(lazy.to_eager().features, expected, rtol=0, atol=1e-6 * expected.abs().max())
    assert lazy.cached == []


def test_too_short_audio_is_an_input_error():
    encoder = random_whisper_encoder(SMALL)
    with pytest.raises(InputError, match="too short"):
        encode_audio(np.full(319, 0.1, dtype=np.float32), encoder)
    assert encode_audio(np.full(320, 0.1, dtype=np.float32), encoder).shape[0] == 1


def test_random_encoder_is_seeded_and_stacks_states():
    a, b = random_whisper_encoder(SMALL, seed=7), random_whisper_encoder(SMALL, seed=7)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert not torch.equal(a.conv1.weight, random_whisper_encoder(SMALL, seed=8).conv1.weight)
    out = a(torch.zeros(2, 80, 3000))
    assert out.shape == (2, 1500, 3, 64)
    with pytest.raises(ValueError, match="3000"):
        a(torch.zeros(1, 80, 2999))


def test_checkpoint_round_trip_and_errors(tmp_path, golden_dir):
    encoder = random_whisper_encoder(SMALL, seed=1)
    dims = {**SMALL.__dict__, "n_vocab": 10, "n_text_ctx": 4, "n_text_state": 64, "n_text_head": 2,
            "n_text_layer": 1}
    state = {f"encoder.{k}": v.half() for k, v in encoder.state_dict().items()}
    state["decoder.token_embedding.weight"] = torch.zeros(10, 64, dtype=torch.float16)  # ignored
    good = tmp_path / "tiny.pt"
    torch.save({"dims": dims, "model_state_dict": state}, good)
    loaded = load_whisper_encoder(good)
    assert loaded.dims == SMALL and loaded.conv1.weight.dtype == torch.float32
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name

    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=str(missing)):
        load_whisper_encoder(missing)
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=str(text)):
        load_whisper_encoder(text)
    no_dims = tmp_path / "no_dims.pt"
    torch.save({"model_state_dict": state}, no_dims)
    with pytest.raises(CheckpointError, match="dims"):
        load_whisper_encoder(no_dims)
    wrong = tmp_path / "wrong.pt"
    torch.save({"dims": {**dims, "n_audio_state": 32}, "model_state_dict": state}, wrong)
    with pytest.raises(CheckpointError, match="shape"):
        load_whisper_encoder(wrong)
    partial = tmp_path / "partial.pt"
    torch.save({"dims": dims, "model_state_dict": {k: v for k, v in state.items() if "ln_post" not in k}},
               partial)
    with pytest.raises(CheckpointError, match="ln_post"):
        load_whisper_encoder(partial)
