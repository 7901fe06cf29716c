"""Video input: probe, stream frames resampled to 25 fps, and loop them ping-pong.

The reference converts every input with the ffmpeg CLI (`ffmpeg -i in -r 25 -crf 18 out.mp4`)
and reads the result back whole. We decode the original once, frame by frame, and pick the
frames that command keeps: `-r 25` on an mp4 output is not the `fps` filter but the CLI's
constant-frame-rate sync (`video_sync_process` in fftools/ffmpeg_filter.c, FFmpeg 7 and
later), which `_CfrSync` reproduces from timestamps alone. The two differ: the CLI lets a
frame fall up to 1.1 output frames behind its slot before it drops one (so 30 fps gives
0..11, 13..17, 19..23, ... and a 20 s clip 502 frames, not 500), where the `fps` filter
rounds each timestamp to the nearest slot. The tests hold frame lists recorded from the real
CLI. Nothing here holds more than a couple of frames, except `FrameSource`, which spills to
a temporary file (not RAM) when it must loop.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from fastsync.errors import InputError

OUTPUT_FPS = 25  # the UNet was trained on 25 fps video; audio chunks are cut at this rate

_VIDEO_HINT = "pass a video file (mp4, mov, mkv, webm, ...) with a video track"
_DAMAGED_HINT = _VIDEO_HINT + "; if it is one, it is damaged or truncated: re-export or re-download it"
# ffmpeg keeps 16 extra bits when it moves timestamps into the 1/25 s grid (adjust_frame_pts_to_encoder_tb).
_EXTRA_BITS = 16
# The CLI's CFR sync tolerates this much drift (in output frames) before it drops or duplicates.
_SYNC_TOLERANCE = 1.1


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int  # as displayed, i.e. after the rotation below
    height: int
    fps: Fraction  # the source's average frame rate
    duration: float  # seconds
    num_frames: int  # source frames: the container's count, or duration * fps when it has none
    codec: str
    rotation: int  # clockwise degrees (0, 90, 180, 270) applied to decoded frames for display


# -- opening and probing ------------------------------------------------------------------------


def _check_path(path: Path) -> None:
    if not path.exists():
        raise InputError("video file not found", path, hint="check the path and the file name")
    if path.is_dir():
        raise InputError("is a directory, not a video file", path, hint=_VIDEO_HINT)
    if not os.access(path, os.R_OK):
        raise InputError("video file is not readable (permission denied)", path,
                         hint="make the file readable by this user")
    if path.stat().st_size == 0:
        raise InputError("video file is empty (0 bytes)", path, hint=_VIDEO_HINT)


def _open(path: Path) -> tuple[av.container.InputContainer, av.VideoStream]:
    _check_path(path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"not a readable media file ({reason})", path, hint=_DAMAGED_HINT) from exc
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
        container.close()
        raise InputError(f"has no video stream (it contains {kinds})", path, hint=_VIDEO_HINT)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame + slice threads: decoding is the costly part
    return container, stream


def _display_rotation(frame: av.VideoFrame) -> int:
    """Clockwise degrees that put the frame upright, as ffmpeg's autorotate does.

    PyAV reports the display matrix's counter-clockwise angle; ffmpeg negates it and applies
    the nearest quarter turn with transpose/flip filters.
    """
    try:
        ccw = frame.rotation
    except (AttributeError, ValueError):
        return 0
    return round(-ccw / 90.0) % 4 * 90


_ROTATE_CODES = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def _to_rgb(frame: av.VideoFrame, rotation: int) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3) uint8; same swscale path OpenCV reads with
    if rotation:
        rgb = cv2.rotate(rgb, _ROTATE_CODES[rotation])
    return rgb


def _decode(container, stream, path: Path) -> Iterator[av.VideoFrame]:
    index = 0
    try:
        for frame in container.decode(stream):
            yield frame
            index += 1
    except av.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"decoding failed after {index} frames ({reason})", path, hint=_DAMAGED_HINT) from exc


def probe_video(path: str | Path) -> VideoInfo:
    """Describe a video without reading it all (decodes only its first frame).

    Raises InputError naming the file for a missing, unreadable or non-video file, a file
    without a video stream, and one whose video decodes to no frame at all.
    """
    path = Path(path)
    container, stream = _open(path)
    with container:
        first = next(_decode(container, stream, path), None)
        if first is None:
            raise InputError("the video track has no decodable frames", path, hint=_VIDEO_HINT)
        rotation = _display_rotation(first)
        fps = Fraction(stream.average_rate or stream.guessed_rate or OUTPUT_FPS)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        num_frames = stream.frames or max(1, round(duration * fps))
        width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(path, width, height, fps, duration, int(num_frames), stream.codec_context.name,
                         rotation)


# -- 25 fps resampling --------------------------------------------------------------------------


def _round_half_away(x: Fraction) -> int:
    """libavutil's default rounding (AV_ROUND_NEAR_INF)."""
    return int(math.copysign(math.floor(abs(x) + Fraction(1, 2)), x))


def _lrintf(x: float) -> int:
    """C's llrintf: through single precision, ties to even."""
    return int(np.rint(np.float32(x)))


class _CfrSync:
    """ffmpeg CLI's constant-frame-rate conversion (VSYNC_CFR / VSYNC_VSCFR), timestamps only.

    Feed every decoded frame in presentation order; `push` answers how many output frames
    repeat the previous input frame and how many show this one. `finish` answers how many
    times the last frame is repeated at end of stream.
    """

    def __init__(self, rate: int = OUTPUT_FPS, skip_initial_gap: bool = False):
        self.rate = rate
        # VSCFR: ffmpeg picks it for a single-stream input; it does not fill a late start.
        self.skip_initial_gap = skip_initial_gap
        self.next_pts = 0  # next output slot, in 1/rate units
        self.emitted = 0
        self.prev_hist = [0, 0, 0]

    def _sync_ipts(self, pts: int, time_base: Fraction) -> float:
        scale = 1 << _EXTRA_BITS
        fine = _round_half_away(pts * time_base * self.rate * scale)
        value = fine / scale
        if fine % scale:  # ffmpeg nudges off exact midpoints to dodge rounding ties
            value += math.copysign(1.0 / (1 << (_EXTRA_BITS + 1)), value)
        return value

    def push(self, pts: int, duration: int, time_base: Fraction) -> tuple[int, int]:
        sync_ipts = self._sync_ipts(pts, time_base)
        frame_dur = duration * (time_base.numerator / time_base.denominator) / (1.0 / self.rate)
        delta0 = sync_ipts - self.next_pts  # drift of this frame against its output slot
        delta = delta0 + frame_dur
        n_prev, n = 0, 1
        if delta0 < 0 < delta:  # the frame starts before its slot: clip it
            frame_dur += delta0
            delta0 = 0.0
        if self.skip_initial_gap and self.emitted == 0 and delta0 >= 0.5:
            delta, delta0 = frame_dur, 0.0
            self.next_pts = int(np.rint(sync_ipts))
        if delta < -_SYNC_TOLERANCE:
            n = 0
        elif delta > _SYNC_TOLERANCE:
            n = _lrintf(delta)
            if delta0 > _SYNC_TOLERANCE:
                n_prev = _lrintf(delta0 - 0.6)
        self.prev_hist = [n_prev] + self.prev_hist[:2]
        self.next_pts += n
        self.emitted += n
        return n_prev, n

    def finish(self) -> int:
        if self.emitted == 0:
            return 0
        return sorted(self.prev_hist)[1]  # the median of the last three, as ffmpeg's mid_pred


class _Timeline:
    """Turns decoded frames into (pts, duration) on ffmpeg's clock: the demuxer shifts the
    file's start to 0, and a frame without a duration lasts one frame of the guessed rate."""

    def __init__(self, container, stream):
        self.time_base = Fraction(stream.time_base)
        start = container.start_time  # microseconds, over all streams, as ffmpeg's ic->start_time
        self.offset = 0 if start is None else _round_half_away(Fraction(start, av.time_base) / self.time_base)
        rate = stream.guessed_rate or stream.average_rate
        self.default_duration = _round_half_away(1 / (Fraction(rate) * self.time_base)) if rate else 0
        self.last_pts: int | None = None
        self.last_duration = self.default_duration

    def place(self, pts: int | None, dts: int | None, duration: int | None) -> tuple[int, int]:
        if pts is None:
            pts = dts
        if pts is None:  # no timestamp at all: continue from the previous frame
            pts = 0 if self.last_pts is None else self.last_pts + self.last_duration
        else:
            pts = pts - self.offset
        if not duration or duration <= 0:
            duration = self.default_duration
            if not duration and self.last_pts is not None:
                duration = max(pts - self.last_pts, 1)
        self.last_pts, self.last_duration = pts, duration
        return pts, duration


def iter_frames_25fps(path: str | Path, *, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Stream the video as RGB uint8 (H, W, 3) frames at 25 fps, upright, in order.

    The frames are the ones `ffmpeg -i path -r 25 out.mp4` would write (see `_CfrSync`).
    Each yielded array is a fresh, writable copy. `max_frames` stops early (for previews and
    tests). Memory holds the decoder's few frames plus one previous frame, whatever the length.
    """
    path = Path(path)
    container, stream = _open(path)
    with container:
        timeline = _Timeline(container, stream)
        sync = _CfrSync(skip_initial_gap=len(container.streams) == 1)
        limit = math.inf if max_frames is None else max_frames
        if limit <= 0:
            return
        produced = 0
        rotation = 0
        prev: av.VideoFrame | None = None
        for frame in _decode(container, stream, path):
            if prev is None:
                rotation = _display_rotation(frame)
            pts, duration = timeline.place(frame.pts, frame.dts, frame.duration)
            n_prev, n = sync.push(pts, duration, timeline.time_base)
            # ffmpeg shows the previous frame n_prev times (a gap in the input), then this one;
            # before the first frame there is no previous one, and this one fills the gap too.
            if prev is None:
                n_prev = 0
            for source, repeats in ((prev, n_prev), (frame, n - n_prev)):
                if repeats <= 0:
                    continue
                rgb = _to_rgb(source, rotation)
                for k in range(repeats):
                    produced += 1
                    yield rgb if k == repeats - 1 else rgb.copy()
                    if produced >= limit:
                        return
            prev = frame
        if prev is None:
            raise InputError("the video track has no decodable frames", path, hint=_VIDEO_HINT)
        repeats = min(sync.finish(), limit - produced)
        if repeats > 0:
            rgb = _to_rgb(prev, rotation)
            for k in range(repeats):
                yield rgb if k == repeats - 1 else rgb.copy()


def count_frames_25fps(path: str | Path) -> int:
    """How many frames `iter_frames_25fps` yields, from packet timestamps alone (no decoding).

    Exact for files whose every packet decodes to one frame (what muxers write); packets
    the demuxer marks for discarding (edit lists) are skipped as the decoder skips them.
    Falls back to decoding when the packets carry no timestamps.
    """
    path = Path(path)
    container, stream = _open(path)
    with container:
        timeline = _Timeline(container, stream)
        sync = _CfrSync(skip_initial_gap=len(container.streams) == 1)
        stamps = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                if packet.pts is None:
                    stamps = None
                    break
                stamps.append((packet.pts, packet.dts, packet.duration))
        except av.FFmpegError as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise InputError(f"reading packets failed ({reason})", path, hint=_DAMAGED_HINT) from exc
    if stamps is None:
        return sum(1 for _ in iter_frames_25fps(path))
    if not stamps:
        raise InputError("the video track has no frames", path, hint=_VIDEO_HINT)
    total = 0
    for pts, dts, duration in sorted(stamps):
        total += sync.push(*timeline.place(pts, dts, duration), timeline.time_base)[1]
    return total + sync.finish()


# -- ping-pong looping --------------------------------------------------------------------------


def pingpong_index(i: int, n_video: int) -> int:
    """Source frame shown at output frame `i` when a video of `n_video` frames is looped.

    The reference concatenates the frames forward, reversed, forward, ... and cuts the result,
    so each turn repeats the end frame: n_video=4 gives 0 1 2 3 3 2 1 0 0 1 2 ...
    """
    if n_video <= 0:
        raise ValueError(f"n_video must be positive, got {n_video}")
    lap, offset = divmod(i, n_video)
    return offset if lap % 2 == 0 else n_video - 1 - offset


class _FrameSpill:
    """Frames of one size written to a temporary file, read back by index.

    Plain reads and writes (not np.memmap) so the page cache never counts as our memory."""

    def __init__(self, parent: str | Path | None = None):
        self.dir = tempfile.mkdtemp(prefix="fastsync-frames-", dir=parent)
        self.path = os.path.join(self.dir, "frames.raw")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.shape: tuple[int, ...] | None = None
        self.count = 0
        self._finalizer = weakref.finalize(self, _remove_spill, self.fd, self.dir)

    def append(self, frame: np.ndarray) -> None:
        if self.shape is None:
            self.shape = frame.shape
        elif frame.shape != self.shape:
            raise ValueError(f"frame {self.count} has shape {frame.shape}, expected {self.shape}")
        data = np.ascontiguousarray(frame, dtype=np.uint8)
        os.pwrite(self.fd, data.data, self.count * data.nbytes)
        self.count += 1

    def read(self, index: int) -> np.ndarray:
        out = np.empty(self.shape, np.uint8)
        got = os.preadv(self.fd, [out.data], index * out.nbytes)
        if got != out.nbytes:
            raise OSError(f"spill file {self.path} is short at frame {index}")
        return out

    def close(self) -> None:
        self._finalizer()


def _remove_spill(fd: int, directory: str) -> None:
    try:
        os.close(fd)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class FrameSource:
    """Exactly `n_out` frames of a video at 25 fps, looped ping-pong when it is too short.

    Iterating yields `(source_index, frame)`: `source_index` is the 25 fps frame of the video
    shown (`pingpong_index(i, n_video)`), so per-frame work on a repeated frame can be reused.
    Frames stream straight from the decoder; only when `n_out` exceeds the video's length are
    they also written to a temporary file, which is deleted as soon as the last frame is handed
    out (or when iteration stops early, or the object is collected). Memory stays flat.
    """

    def __init__(self, path: str | Path, n_out: int, *, spill_dir: str | Path | None = None):
        if n_out < 0:
            raise ValueError(f"n_out must be >= 0, got {n_out}")
        self.path = Path(path)
        self.n_out = n_out
        self.spill_dir = spill_dir
        self.n_video: int | None = None  # known once the first pass has ended
        self.spilled = False  # whether the last iteration needed the temporary file

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        if self.n_out == 0:
            return
        spill = _FrameSpill(self.spill_dir) if self.n_out > count_frames_25fps(self.path) else None
        self.spilled = spill is not None
        try:
            produced = 0
            for frame in iter_frames_25fps(self.path, max_frames=self.n_out):
                if spill is not None:
                    spill.append(frame)
                produced += 1
                if produced == self.n_out and spill is not None:
                    spill.close()  # nothing will be looped: free the disk before the last hand-out
                yield produced - 1, frame
            if produced == self.n_out:
                self.n_video = self.n_video if spill is None else produced
                return
            self.n_video = produced
            if produced == 0:
                raise InputError("the video track has no decodable frames", self.path, hint=_VIDEO_HINT)
            if spill is None:  # the packet count undershot: take a second pass into the file
                spill = _FrameSpill(self.spill_dir)
                self.spilled = True
                for frame in iter_frames_25fps(self.path, max_frames=produced):
                    spill.append(frame)
            for i in range(produced, self.n_out):
                frame = spill.read(pingpong_index(i, produced))
                if i == self.n_out - 1:
                    spill.close()
                yield pingpong_index(i, produced), frame
        finally:
            if spill is not None:
                spill.close()
