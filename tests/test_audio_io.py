"""Audio decoding: formats, the reference's s16 scaling, and errors that name the file."""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from fastsync.errors import InputError
from fastsync.media.audio import audio_duration_s, check_not_silent, load_audio

SECONDS = 1.0


def write_audio(path: Path, codec: str, samples: np.ndarray, rate: int, layout: str = "stereo") -> Path:
    """Encode float samples in [-1, 1], shape (channels, n), with PyAV."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        fmt = stream.codec_context.format
        data = samples.astype(np.float32)
        if fmt.name.startswith("s16"):
            data = np.round(data * 32767).astype(np.int16)
        elif fmt.name.startswith("s32"):
            data = np.round(data * 2147483647).astype(np.int32)
        if not fmt.is_planar:
            data = data.T.reshape(1, -1)  # interleave channels
        step = 4096
        for start in range(0, samples.shape[1], step):
            piece = np.ascontiguousarray(data[:, start : start + step] if fmt.is_planar
                                         else data[:, start * samples.shape[0] : (start + step) * samples.shape[0]])
            frame = av.AudioFrame.from_ndarray(piece, format=fmt.name, layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def tone(rate: int, channels: int, seconds: float = SECONDS, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.stack([amplitude * np.sin(2 * np.pi * 440 * (c + 1) * t) for c in range(channels)])


def test_reference_wav_decodes_exactly(assets_dir):
    path = assets_dir / "demo1_audio.wav"
    samples = load_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert samples.shape == (153600,)  # 9.6 s at 16 kHz, stored as 16 kHz mono s16
    # Passthrough: every value is an int16 over 32768.
    assert np.array_equal(samples * 32768, np.round(samples * 32768))
    assert audio_duration_s(samples) == pytest.approx(9.6)
    assert audio_duration_s(path) == pytest.approx(9.6)


def test_audio_track_of_a_video(assets_dir):
    samples = load_audio(assets_dir / "demo1_video.mp4")  # AAC 44.1 kHz stereo inside
    assert samples.dtype == np.float32 and samples.ndim == 1
    expected = 441353 / 44100 * 16000  # the track's 441353 samples at 44.1 kHz
    assert abs(samples.shape[0] - expected) <= 16  # within 1 ms
    assert 0.01 < np.abs(samples).max() <= 1.0


@pytest.mark.parametrize(
    "name, codec, rate, layout, slack_s",
    [
        # Lossy codecs may keep part of a padded last frame (AAC: 43 samples here).
        ("tone.mp3", "libmp3lame", 44100, "stereo", 0.01),
        ("tone.m4a", "aac", 48000, "stereo", 0.01),
        ("tone.flac", "flac", 22050, "mono", 0.0001),
        ("tone.wav", "pcm_s16le", 8000, "stereo", 0.0001),
    ],
)
def test_formats_decode_to_16k_mono(tmp_path, name, codec, rate, layout, slack_s):
    channels = 2 if layout == "stereo" else 1
    path = write_audio(tmp_path / name, codec, tone(rate, channels), rate, layout)
    samples = load_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(samples.shape[0] - SECONDS * 16000) <= slack_s * 16000, samples.shape
    assert 0.1 < np.abs(samples).max() < 1.0


def test_resampling_keeps_time_alignment(tmp_path):
    # A 22.05 kHz 440 Hz tone must come out as the same tone sampled at 16 kHz, not shifted.
    path = write_audio(tmp_path / "tone.flac", "flac", tone(22050, 1), 22050, "mono")
    samples = load_audio(path)
    t = np.arange(samples.shape[0]) / 16000
    expected = 0.5 * np.sin(2 * np.pi * 440 * t)
    middle = slice(800, -800)  # away from the resampler's edge transients
    assert np.abs(samples[middle] - expected[middle]).max() < 2e-3


def test_stereo_is_averaged_to_mono(tmp_path):
    left_right = np.stack([np.full(8000, 0.5), np.full(8000, -0.25)])
    samples = load_audio(write_audio(tmp_path / "lr.wav", "pcm_s16le", left_right, 16000, "stereo"))
    np.testing.assert_allclose(samples, 0.125, atol=2 / 32768)


def make_video_without_audio(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(5):
            image = np.full((64, 64, 3), 40 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    text = tmp_path / "notes.wav"
    text.write_text("this is a text file, not audio\n" * 20)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    no_samples = tmp_path / "no_samples.wav"
    with wave.open(str(no_samples), "wb") as header_only:  # a valid wav header, no data
        header_only.setnchannels(1)
        header_only.setsampwidth(2)
        header_only.setframerate(16000)
    silent = write_audio(tmp_path / "silent.wav", "pcm_s16le", np.zeros((1, 16000)), 16000, "mono")
    return {
        "missing": (tmp_path / "missing.wav", "not found"),
        "text": (text, "not a readable audio"),
        "no_audio": (make_video_without_audio(tmp_path / "video_only.mp4"), "no audio stream"),
        "empty_file": (empty, "empty"),
        "zero_samples": (no_samples, "zero samples"),
        "silent": (silent, "silent"),
    }


def test_bad_inputs_raise_input_error_naming_the_file(tmp_path):
    for kind, (path, words) in bad_inputs(tmp_path).items():
        with pytest.raises(InputError) as info:
            load_audio(path)
        message = str(info.value)
        assert str(path) in message, kind
        assert words in message, (kind, message)
        assert info.value.path == path


def test_silence_check_is_separate_and_has_a_threshold(tmp_path):
    lsb = 1 / 32768
    with pytest.raises(InputError, match="silent"):
        check_not_silent(np.full(100, 3 * lsb, dtype=np.float32), tmp_path / "a.wav")
    check_not_silent(np.full(100, 4 * lsb, dtype=np.float32), tmp_path / "a.wav")
    path = tmp_path / "silent.wav"
    write_audio(path, "pcm_s16le", np.zeros((1, 1600)), 16000, "mono")
    assert load_audio(path, allow_silent=True).shape == (1600,)
