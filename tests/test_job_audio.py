"""The job's audio context: whisper windows encoded lazily, on the job's thread, giving
the denoiser the same chunks as the eager features.

A whisper encoder with 1 s windows (n_audio_ctx = 50, 100 mel frames) stands in for the
tiny one, so that a 3.3 s track spans four windows (the last partial) and six chunks, two
of them across a window boundary, without a 2-minute job.
"""

from __future__ import annotations

import threading

import pytest
import torch
from job_clips import source_frames, trim_wav, write_clip

from fastsync.api import LipSync
from fastsync.audio.features import AudioFeatures, LazyAudioFeatures
from fastsync.denoise import ChunkDenoiser, SamplingOptions
from fastsync.models.whisper import WhisperDims, random_whisper_encoder

torch.set_num_threads(2)

ONE_SECOND_WINDOWS = WhisperDims(n_audio_ctx=50)  # tiny's width and depth: the UNet's (50, 384) context


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, assets_dir):
    tmp = tmp_path_factory.mktemp("job_audio")
    video = write_clip(tmp / "ten.mp4", source_frames(assets_dir / "demo1_video.mp4", 10, size=(540, 960)))
    return video, trim_wav(assets_dir / "demo1_audio.wav", tmp / "track.wav", 3.3)


@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_job_encodes_windows_lazily_and_feeds_the_eager_chunks(mode, inputs, tmp_path, monkeypatch):
    video, audio = inputs
    engine = LipSync.load(random_weights=True, model_size="tiny", device="cpu", mode=mode)
    encoder = random_whisper_encoder(ONE_SECOND_WINDOWS, seed=1)
    monkeypatch.setattr(engine.components, "whisper", encoder)

    contexts = []
    denoise = ChunkDenoiser.__call__

    def recording_denoise(self, faces, context):
        contexts.append(context.clone())
        return denoise(self, faces, context)

    encodes = []  # (window, windows held while it is encoded, thread)
    encode = LazyAudioFeatures._encode

    def recording_encode(self, index):
        encodes.append((index, len(self.cached), threading.get_ident()))
        return encode(self, index)

    monkeypatch.setattr(ChunkDenoiser, "__call__", recording_denoise)
    monkeypatch.setattr(LazyAudioFeatures, "_encode", recording_encode)
    report = engine.run(video, audio, tmp_path / "out.mp4", sampling=SamplingOptions(steps=2))

    eager = AudioFeatures.from_file(audio, encoder)  # 330 mel frames: 50 + 50 + 50 + 15 rows
    assert eager.features.shape[0] == 165 and report.frames == eager.num_frames == 84
    assert report.frames_without_face == 0 and len(contexts) == 6
    # Windows run one at a time here, three in one batch there: float rounding apart.
    got, expected = torch.cat(contexts), eager.chunks()
    assert got.shape == expected.shape == (84, 50, 384)
    error, scale = float((got - expected).abs().max()), float(eager.features.abs().max())
    assert error <= 1e-5 * scale, (error, scale)
    # Each window once, in order, at most one other held meanwhile, all on the job's thread
    # (in fast mode, worker threads queue no GPU work).
    assert [(index, held) for index, held, _ in encodes] == [(0, 0), (1, 1), (2, 1), (3, 1)]
    assert {thread for _, _, thread in encodes} == {threading.get_ident()}
