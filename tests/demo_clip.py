"""Short, small copies of a demo clip for end-to-end runs on a CPU.

The demo videos are 1080x1920 HEVC: at full size, decoding, x264 and PSNR/SSIM over the
frames cost more than the tiny model itself. A third of the size keeps the face well
inside what the dlib detector finds (it looks at 640 px on the long side anyway), and a
second of audio gives 27 output frames: one full 16-frame chunk and a short last one.
"""

from __future__ import annotations

import wave
from pathlib import Path

import av

from fastsync.media.video import iter_frames_25fps, probe_video
from fastsync.media.writer import VideoWriter


def trim_audio(src: Path, dst: Path, seconds: float) -> Path:
    """The first `seconds` of a WAV file, cut with the standard library."""
    with wave.open(str(src), "rb") as reader:
        params = reader.getparams()
        data = reader.readframes(int(seconds * reader.getframerate()))
    with wave.open(str(dst), "wb") as writer:
        writer.setparams(params)
        writer.writeframes(data)
    return dst


def trim_video(src: Path, dst: Path, frames: int, divide: int = 3) -> Path:
    """The first `frames` frames (at 25 fps), each side divided by `divide` (kept even)."""
    info = probe_video(src)
    width, height = info.width // divide // 2 * 2, info.height // divide // 2 * 2
    with VideoWriter(dst, width, height) as writer:
        for frame in iter_frames_25fps(src, max_frames=frames):
            small = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(width, height)
            writer.write(small.to_ndarray(format="rgb24"))
    return dst


def demo_clip(assets_dir: Path, out_dir: Path, seconds: float = 1.0) -> tuple[Path, Path]:
    """(video, audio): demo1 trimmed to `seconds` of audio and a few more video frames."""
    audio = trim_audio(assets_dir / "demo1_audio.wav", out_dir / "demo1_short.wav", seconds)
    video = trim_video(assets_dir / "demo1_video.mp4", out_dir / "demo1_short.mp4", int(seconds * 25) + 5)
    return video, audio
