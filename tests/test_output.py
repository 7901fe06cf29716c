"""The output's encoding (fastsync.output): the audio file's own track by default, the
reference's 16 kHz mono on request, cut where the reference cuts it and read as it is
written; and the video's crf."""

from __future__ import annotations

import contextlib
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from job_clips import QUICK, TINY, inspect, source_frames, trim_wav, write_clip
from media_clips import frame_for

from fastsync import cli
from fastsync.errors import InputError
from fastsync.media.audio_track import FileTrack, SamplesTrack, bit_rate, job_audio_track, output_rate
from fastsync.media.writer import VideoWriter

W, H = 64, 48
LEFT_HZ, RIGHT_HZ = 440.0, 1000.0


def write_tones(path: Path, rate: int, channels: int, seconds: float) -> Path:
    """16-bit PCM wav: channel 0 at LEFT_HZ, channel 1 at RIGHT_HZ, further ones silent."""
    t = np.arange(int(rate * seconds)) / rate
    tracks = [0.4 * np.sin(2 * np.pi * LEFT_HZ * t), 0.4 * np.sin(2 * np.pi * RIGHT_HZ * t)]
    tracks += [np.zeros_like(t)] * (channels - 2)
    pcm = (np.stack(tracks[:channels], axis=1) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def decoded_track(path: Path) -> tuple[int, np.ndarray]:
    """(rate, float samples (channels, n)) of a file's first audio stream."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        pieces = [frame.to_ndarray() for frame in container.decode(stream)]
        return stream.sample_rate, np.concatenate(pieces, axis=1)


def loudest_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[spectrum.argmax()])


def write_video(path: Path, frames: int, track) -> VideoWriter:
    with VideoWriter(path, W, H, audio=track, preset="ultrafast") as writer:
        for i in range(frames):
            writer.write(frame_for(i, W, H))
    return writer


@pytest.mark.parametrize(("rate", "written"), [(7000, 7350), (16000, 16000), (22050, 22050), (44100, 44100),
                                               (48000, 48000), (50000, 48000), (96000, 48000)])
def test_output_rate_keeps_the_source_rate_where_aac_takes_it(rate, written):
    assert output_rate(rate) == written
    assert bit_rate(16000, 1) == 64_000 and bit_rate(48000, 2) == 192_000


def test_a_stereo_source_keeps_its_rate_and_both_channels(tmp_path):
    source = write_tones(tmp_path / "stereo.wav", 44100, 2, 2.0)
    out = tmp_path / "out.mp4"
    writer = write_video(out, 30, FileTrack(source))
    assert writer.audio_samples_written == int(30 / 25 * 44100)  # cut where the reference cuts
    rate, samples = decoded_track(out)
    assert rate == 44100 and samples.shape[0] == 2
    assert samples.shape[1] / rate == pytest.approx(30 / 25, abs=2048 / rate)  # AAC's priming and padding
    middle = samples[:, rate // 4: rate]  # away from the encoder's edges
    assert loudest_hz(middle[0], rate) == pytest.approx(LEFT_HZ, abs=2)
    assert loudest_hz(middle[1], rate) == pytest.approx(RIGHT_HZ, abs=2)


def test_more_channels_are_downmixed_to_stereo_and_high_rates_to_48k(tmp_path):
    source = write_tones(tmp_path / "surround.wav", 96000, 6, 1.0)
    track = FileTrack(source)
    assert (track.rate, track.channels) == (48000, 2)
    out = tmp_path / "out.mp4"
    write_video(out, 20, track)
    rate, samples = decoded_track(out)
    assert rate == 48000 and samples.shape[0] == 2
    assert np.abs(samples).max() > 0.05  # the front channels reach the stereo mix


def test_a_mono_source_stays_mono(tmp_path):
    track = FileTrack(write_tones(tmp_path / "mono.wav", 22050, 1, 0.5))
    assert (track.rate, track.channels) == (22050, 1)
    piece = track.read(1000)
    assert piece.shape == (1, 1000) and piece.dtype == np.float32
    assert loudest_hz(piece[0], 22050) == pytest.approx(LEFT_HZ, abs=25)
    track.close()


def test_reading_in_pieces_equals_reading_at_once(tmp_path):
    """The writer reads a frame's worth at a time; the samples must not depend on that."""
    source = write_tones(tmp_path / "stereo.wav", 32000, 2, 1.0)
    whole = FileTrack(source).read(10**6)
    track = FileTrack(source)
    pieces = []
    while (piece := track.read(1280)).shape[1]:  # 1 / 25 s at 32 kHz
        pieces.append(piece)
    assert whole.shape == (2, 32000)
    np.testing.assert_array_equal(np.concatenate(pieces, axis=1), whole)


def test_a_short_track_ends_early(tmp_path):
    out = tmp_path / "out.mp4"
    writer = write_video(out, 25, FileTrack(write_tones(tmp_path / "short.wav", 48000, 2, 0.5)))
    assert writer.audio_samples_written == 24000
    assert inspect(out).audio_seconds == pytest.approx(0.5, abs=2048 / 48000)


def test_the_reference_track_is_the_16k_samples(tmp_path):
    samples = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
    track = job_audio_track("reference", tmp_path / "unused.wav", samples, 16000)
    assert isinstance(track, SamplesTrack) and (track.rate, track.channels) == (16000, 1)
    np.testing.assert_array_equal(track.read(100)[0], samples[:100])
    with pytest.raises(ValueError, match="unknown output audio"):
        job_audio_track("loud", tmp_path / "unused.wav", samples, 16000)


@pytest.mark.parametrize("content", [b"", b"not audio at all"])
def test_an_unreadable_file_names_itself(tmp_path, content):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(content)
    with pytest.raises(InputError, match="bad.wav"):
        FileTrack(bad)


def test_a_file_without_audio_names_itself(tmp_path):
    clip = write_clip(tmp_path / "silent.mp4", [frame_for(i, W, H) for i in range(3)])
    with pytest.raises(InputError, match="no audio stream") as err:
        FileTrack(clip)
    assert "silent.mp4" in str(err.value)


# -- the job: `run --output-audio` ---------------------------------------------------------------


@pytest.fixture(scope="module")
def stereo_job(tmp_path_factory, assets_dir):
    """demo1's first frames and 1 s of demo2's speech, as 44.1 kHz stereo (speech on the left,
    a 1 kHz tone on the right)."""
    tmp = tmp_path_factory.mktemp("stereo_job")
    video = write_clip(tmp / "ten.mp4", source_frames(assets_dir / "demo1_video.mp4", 10, size=(270, 480)))
    speech = trim_wav(assets_dir / "demo2_audio.wav", tmp / "speech.wav", 1.0)
    with wave.open(str(speech)) as r:
        mono = np.frombuffer(r.readframes(r.getnframes()), np.int16).astype(np.float64) / 32768
    t = np.arange(44100) / 44100
    left = np.interp(t, np.arange(mono.size) / 16000, mono)
    right = 0.3 * np.sin(2 * np.pi * RIGHT_HZ * t)
    stereo = tmp / "stereo.wav"
    with wave.open(str(stereo), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes((np.stack([left, right], axis=1) * 32767).astype(np.int16).tobytes())
    return video, stereo


@pytest.mark.parametrize(("choice", "host", "rate", "channels", "crf"), [
    (None, "--host-threads", 44100, 2, None),
    ("source", "--host-processes", 44100, 2, 30),
    ("reference", "--host-processes", 16000, 1, 12),
])
def test_run_writes_the_chosen_audio_track_and_quality(stereo_job, tmp_path, choice, host, rate, channels, crf):
    video, audio = stereo_job
    output = tmp_path / "out.mp4"
    options = ([] if choice is None else ["--output-audio", choice]) + ([] if crf is None else ["--crf", str(crf)])
    assert cli.main(["run", "--video", str(video), "--audio", str(audio), "--output", str(output),
                     *TINY, *QUICK, host, *options]) == 0
    # x264 writes its settings into the stream: the crf the job was given, or the reference's 18
    assert f"crf={18 if crf is None else crf}.0 ".encode() in output.read_bytes()
    written = inspect(output)
    frames = written.frames
    assert (written.audio_codec, written.sample_rate) == ("aac", rate)
    assert written.audio_seconds == pytest.approx(min(frames / 25, 1.0), abs=2048 / rate)
    got_rate, samples = decoded_track(output)
    assert samples.shape[0] == channels
    if channels == 2:  # the right channel is the tone alone, the left the speech
        assert loudest_hz(samples[1, rate // 4:], rate) == pytest.approx(RIGHT_HZ, abs=3)
        assert loudest_hz(samples[0, rate // 4:], rate) != pytest.approx(RIGHT_HZ, abs=3)


@pytest.mark.parametrize(("flag", "value", "message"), [("--crf", "60", "--crf 60 is out of range"),
                                                       ("--output-audio", "loud", "invalid choice")])
def test_bad_output_options_fail_before_the_models_load(stereo_job, tmp_path, monkeypatch, capsys, flag, value,
                                                        message):
    from fastsync import api

    monkeypatch.setattr(api.LipSync, "from_options", lambda options: pytest.fail("the models were loaded"))
    video, audio = stereo_job
    with pytest.raises(SystemExit) if value == "loud" else contextlib.nullcontext():
        code = cli.main(["run", "--video", str(video), "--audio", str(audio), "--output", str(tmp_path / "o.mp4"),
                         *TINY, flag, value])
        assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()

