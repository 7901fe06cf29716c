"""The lip-sync job, streamed chunk by chunk so memory stays flat with video length.

    audio file ──► features ──► per-frame chunks (N of them: the output length)
    video file ──► 25 fps frames (ping-pong looped to N) ──► landmarks ──► aligned faces
                                        │                                     │
                                        │              16-frame chunk ◄───────┘
                                        │                    │ VAE + DDIM + VAE
                                        └──► paste back ◄────┘
                                                 │
                                      H.264 + AAC, written atomically

In fast mode, preparing chunk k+1 (decode, detect, align) and finishing chunk k-1
(paste back, encode) run in worker threads while the GPU denoises chunk k.

The audio side streams too: the job holds the samples (for the muxer) and their log-mel,
and encodes a 30 s whisper window when the first chunk that needs it is denoised, keeping
two (audio/features.py, `LazyAudioFeatures`). That runs on the job's thread, like all
GPU work: worker threads queue none.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fastsync import stages
from fastsync.denoise import ChunkDenoiser, SamplingOptions
from fastsync.engine import Components
from fastsync.errors import InputError, NoFaceError
from fastsync.face.cache import LandmarkCache
from fastsync.progress import Progress
from fastsync.transfer import Download

AUDIO_SAMPLE_RATE = 16_000
VIDEO_FPS = 25


@dataclass
class JobReport:
    output: Path
    frames: int
    seconds: float
    frames_without_face: int = 0
    frames_with_several_faces: int = 0
    stages: dict[str, float] = field(default_factory=dict)
    mouth_boxes: list[list[int] | None] = field(default_factory=list)  # per output frame, frame pixels

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        text = f"{self.frames} frames in {self.seconds:.1f} s ({self.fps:.1f} frames/s) -> {self.output}"
        if self.frames_without_face:
            text += f"; {self.frames_without_face} frame(s) had no face and were kept unchanged"
        if self.frames_with_several_faces:
            text += f"; {self.frames_with_several_faces} frame(s) had several faces: the largest was used"
        return text


@dataclass
class Chunk:
    index: int
    start: int  # output frame of frames[0]; the audio context is gathered for [start, start + F)
    frames: list[np.ndarray]  # original frames, RGB uint8 (H, W, 3)
    faces: torch.Tensor | None  # (F, 3, res, res) uint8, None when no frame has a face
    affines: list[np.ndarray | None]  # per frame: the similarity transform, None = no face


class FaceTracker:
    """Landmarks -> smoothed alignment, once per *source* frame.

    When the video is ping-pong looped, a source frame is seen again in reverse; the
    reference aligns the source video once and reuses the result, so we keep each
    source frame's affine matrix (a few bytes) and re-warp with it.
    """

    def __init__(self, components: Components, workers: ThreadPoolExecutor | None, cache: LandmarkCache):
        from fastsync.face.align import Aligner

        self.landmarker = components.landmarker
        self.aligner = Aligner(components.options.resolution)
        self.workers = workers
        self.cache = cache
        self.affine_by_source: dict[int, np.ndarray | None] = {}
        self.without_face = 0
        self.several_faces = 0

    def _detect(self, frames: list[np.ndarray]) -> list:
        if self.workers is None or len(frames) == 1:
            return [self.landmarker.detect(f) for f in frames]
        return list(self.workers.map(self.landmarker.detect, frames))

    def _landmarks(self, sources: list[int], frames: list[np.ndarray]) -> None:
        """Fill the cache for every source frame not seen before (detection runs batched)."""
        todo: dict[int, int] = {}  # source -> its first position in this batch
        for i, s in enumerate(sources):
            # A looped video shows a source frame twice within one chunk: detect it once.
            if s not in self.cache and s not in self.affine_by_source and s not in todo:
                todo[s] = i
        for i, result in zip(todo.values(), self._detect([frames[i] for i in todo.values()])):
            if result is None:
                self.cache.put(sources[i], None)
            else:
                self.cache.put(sources[i], result.points3, result.num_faces)

    def process(self, sources: list[int], frames: list[np.ndarray]):
        """Returns per frame (face uint8 (res,res,3) | None, affine | None)."""
        from fastsync.face.align import warp_face

        self._landmarks(sources, frames)
        out = []
        for source, frame in zip(sources, frames):
            if source not in self.affine_by_source:  # first visit: smoothing runs in source order
                entry = self.cache.get(source)
                if entry is None:
                    self.affine_by_source[source] = None
                else:
                    points3, num_faces = entry
                    self.several_faces += int(num_faces > 1)
                    self.affine_by_source[source] = self.aligner.next_matrix(points3)
            affine = self.affine_by_source[source]
            if affine is None:
                self.without_face += 1
                out.append((None, None))
            else:
                out.append((warp_face(frame, affine, self.aligner.resolution), affine))
        return out


def mouth_box(affine: np.ndarray, mouth_rect: tuple[int, int, int, int], resolution: int,
              frame_size: tuple[int, int]) -> list[int]:
    """The frame-space bounding box (x0, y0, x1, y1) of the regenerated mouth region."""
    from fastsync.face.align import crop_size

    crop_w, crop_h = crop_size(resolution)
    x0, y0, x1, y1 = mouth_rect
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=np.float64)
    corners *= [crop_w / resolution, crop_h / resolution]
    full = np.vstack([np.asarray(affine, dtype=np.float64), [0, 0, 1]])
    inverse = np.linalg.inv(full)[:2]
    points = corners @ inverse[:, :2].T + inverse[:, 2]
    width, height = frame_size
    lo = np.floor(points.min(0)).clip(0, [width, height]).astype(int)
    hi = np.ceil(points.max(0)).clip(0, [width, height]).astype(int)
    return [int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])]


def mask_rect(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of the region the model regenerates (mask < 0.5)."""
    rows = torch.nonzero((mask < 0.5).any(1)).flatten()
    cols = torch.nonzero((mask < 0.5).any(0)).flatten()
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _faces_tensor(faces: list[np.ndarray | None]) -> torch.Tensor | None:
    """Stack faces (F, 3, res, res); a frame without a face borrows its nearest neighbour's,
    so the temporal layers see a plausible clip (its output is discarded)."""
    valid = [i for i, f in enumerate(faces) if f is not None]
    if not valid:
        return None
    filled = [faces[i] if faces[i] is not None else faces[min(valid, key=lambda v: abs(v - i))]
              for i in range(len(faces))]
    return torch.from_numpy(np.stack(filled)).permute(0, 3, 1, 2).contiguous()


def _paste(frame: np.ndarray, face: np.ndarray, affine: np.ndarray | None) -> np.ndarray:
    from fastsync.face.restore import paste_back

    return frame if affine is None else paste_back(frame, face, affine)


def load_job_audio(path: Path) -> np.ndarray:
    """16 kHz samples of `path`; InputError naming the file when it is missing, unreadable,
    empty, silent or too short to give one audio feature."""
    from fastsync.audio.features import MIN_SAMPLES
    from fastsync.media.audio import load_audio

    samples = load_audio(path)  # refuses missing, unreadable, empty and silent tracks
    if len(samples) < MIN_SAMPLES:
        raise InputError(f"the audio is too short to lip-sync: {len(samples)} samples, need at least "
                         f"{MIN_SAMPLES} ({MIN_SAMPLES / AUDIO_SAMPLE_RATE * 1000:.0f} ms)", path,
                         hint="pass a longer audio track")
    return samples


def check_inputs(video: Path, audio: Path, output: Path) -> None:
    """Every input check that needs no model. The CLI runs it before loading the weights,
    so a wrong path fails at once, not after the load (a minute with the full model)."""
    from fastsync.media.video import probe_video
    from fastsync.media.writer import check_output_writable

    check_output_writable(output)
    probe_video(video)
    load_job_audio(audio)


class Job:
    def __init__(self, components: Components, sampling: SamplingOptions, *, progress: bool = True,
                 clock: stages.StageClock | None = None, landmarks_cache: Path | None = None):
        self.c = components
        self.sampling = sampling
        self.fast = components.options.mode == "fast"
        self.clock = clock or stages.StageClock()
        self.progress = progress
        self.landmarks_cache = landmarks_cache
        self.mouth_boxes: list[list[int] | None] = []

    # -- inputs ------------------------------------------------------------------------------
    def _audio(self, audio_path: Path):
        """Samples and the lazy encoder features: the log-mel is computed now, on the encoder's
        device; each 30 s window is encoded when a chunk first needs it (`_audio_context`)."""
        from fastsync.audio.features import LazyAudioFeatures

        samples = load_job_audio(audio_path)
        with self.clock.stage(stages.AUDIO):
            features = LazyAudioFeatures.from_samples(samples, self.c.whisper, self.c.device)
        return samples, features

    def _audio_context(self, chunk: Chunk) -> torch.Tensor:
        """(F, 50, 384) float32 on the encoder's device; encodes a window the first time one is reached."""
        with self.clock.stage(stages.AUDIO):
            return self._features.chunks(chunk.start, chunk.start + len(chunk.frames))

    def _chunks(self, video: Path, n: int, tracker: FaceTracker, bar: Progress) -> Iterator[Chunk]:
        from fastsync.media.video import FrameSource

        step = self.sampling.num_frames
        source = iter(FrameSource(video, n))
        for index, start in enumerate(range(0, n, step)):
            with self.clock.stage(stages.ALIGN):  # decode + landmarks + warp of one chunk
                pairs = [next(source) for _ in range(min(step, n - start))]  # (source index, frame)
                sources, frames = [p[0] for p in pairs], [p[1] for p in pairs]
                faces, affines = zip(*tracker.process(sources, frames))
                chunk = Chunk(index, start, frames, _faces_tensor(list(faces)), list(affines))
            bar.update("faces", len(frames))
            yield chunk  # outside the stage: the consumer's time is not ours

    # -- the job ------------------------------------------------------------------------------
    def run(self, video: Path, audio_path: Path, output: Path) -> JobReport:
        from fastsync.media.video import probe_video
        from fastsync.media.writer import VideoWriter, check_output_writable

        started = time.perf_counter()
        video, audio_path, output = Path(video), Path(audio_path), Path(output)
        check_output_writable(output)
        info = probe_video(video)
        samples, audio = self._audio(audio_path)
        self._features = audio
        n = audio.num_frames
        kept_samples = samples[: int(n / VIDEO_FPS * AUDIO_SAMPLE_RATE)]  # a view: the audio is held once

        denoiser = self._denoiser()
        workers = self._face_workers()
        cache = LandmarkCache(self.landmarks_cache, video, self.c.landmarker.name)
        tracker = FaceTracker(self.c, workers, cache)
        self._mouth = (mask_rect(self.c.mask), (info.width, info.height))
        bar = Progress(n, enabled=self.progress)
        try:
            preset = self.c.options.fast.x264_preset if self.fast else "medium"
            with VideoWriter(output, info.width, info.height, fps=VIDEO_FPS, audio=kept_samples,
                             sample_rate=AUDIO_SAMPLE_RATE, preset=preset) as writer:
                chunks = self._chunks(video, n, tracker, bar)
                if self.fast and self.c.options.fast.overlap:
                    self._run_overlapped(chunks, denoiser, writer, workers, bar)
                else:
                    for chunk in chunks:
                        self._finish(chunk, self._denoise(chunk, denoiser, bar), writer, None, bar)
                if tracker.without_face == n:
                    raise NoFaceError("no face was found in any frame", video,
                                      hint="fastsync needs a visible, roughly frontal face")
                with self.clock.stage(stages.WRITE):  # x264 holds its look-ahead until the flush
                    writer.close()
        finally:
            bar.close()
        cache.save()
        return JobReport(output, n, time.perf_counter() - started, tracker.without_face,
                         tracker.several_faces, self.clock.as_dict(), self.mouth_boxes)

    def _face_workers(self) -> ThreadPoolExecutor | None:
        """Fast mode's detection/paste-back threads live with the engine, so each thread's
        face detector is built once, not once per job."""
        if not self.fast:
            return None
        if "face_workers" not in self.c.cache:
            self.c.cache["face_workers"] = ThreadPoolExecutor(self.c.options.fast.face_workers,
                                                              thread_name_prefix="faces")
        return self.c.cache["face_workers"]

    def _denoiser(self) -> ChunkDenoiser:
        from fastsync.accel.predictor import make_predictor

        predict, on_chunk_start = make_predictor(self.c, self.sampling)
        return ChunkDenoiser(predict, self.c.vae, self.c.scheduler, self.c.mask, self.sampling,
                             device=self.c.device, dtype=self.c.dtype,
                             batch_vae=self.fast and self.c.options.fast.batch_vae,
                             vae_micro_batch=self.c.options.fast.vae_micro_batch if self.fast else 0,
                             on_chunk_start=on_chunk_start,
                             max_queued=self.c.options.fast.max_queued if self.fast else 0)

    def _denoise(self, chunk: Chunk, denoiser: ChunkDenoiser, bar: Progress) -> Download | None:
        """Queue the chunk's GPU work and its copy back; `_finish` waits for the copy, so this
        thread goes on to queue the next chunk while the GPU works (see fastsync.transfer)."""
        faces = None  # no face in the whole chunk: its frames pass through untouched
        if chunk.faces is not None:
            audio = self._audio_context(chunk)
            with self.clock.stage(stages.DENOISE):
                # (F, 3, res, res) in [-1, 1]; paste-back takes it unquantised, as the reference does
                faces = Download(denoiser(chunk.faces, audio).float())
        return faces

    def _finish(self, chunk: Chunk, pending: Download | None, writer, workers, bar) -> None:
        faces = None
        if pending is not None:
            with self.clock.stage(stages.DENOISE):  # the GPU time not hidden behind other work
                faces = pending.numpy()
        bar.update("denoise", len(chunk.frames))
        with self.clock.stage(stages.RESTORE):
            if faces is None:
                frames = chunk.frames
            elif workers is None:
                frames = [_paste(f, face, a) for f, face, a in zip(chunk.frames, faces, chunk.affines)]
            else:
                frames = list(workers.map(_paste, chunk.frames, faces, chunk.affines))
        with self.clock.stage(stages.WRITE):
            for frame in frames:
                writer.write(frame)
        rect, size = self._mouth
        res = self.c.options.resolution
        self.mouth_boxes += [None if a is None else mouth_box(a, rect, res, size) for a in chunk.affines]
        bar.update("write", len(frames))

    def _run_overlapped(self, chunks: Iterator[Chunk], denoiser, writer, workers, bar) -> None:
        """Prepare k+1 and finish k-1 on CPU threads while the GPU denoises chunk k.
        At most three chunks are alive at once, so memory does not grow with the video."""
        prepare = ThreadPoolExecutor(1, thread_name_prefix="prepare")
        finish = ThreadPoolExecutor(1, thread_name_prefix="finish")
        pending: Future | None = None
        try:
            upcoming = prepare.submit(next, chunks, None)
            while (chunk := upcoming.result()) is not None:
                upcoming = prepare.submit(next, chunks, None)
                faces = self._denoise(chunk, denoiser, bar)
                if pending is not None:
                    pending.result()  # keep output order, and surface errors
                pending = finish.submit(self._finish, chunk, faces, writer, workers, bar)
            if pending is not None:
                pending.result()
        finally:
            prepare.shutdown(wait=True, cancel_futures=True)
            finish.shutdown(wait=True, cancel_futures=True)
