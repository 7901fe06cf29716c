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
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from fastsync import stages
from fastsync.denoise import ChunkDenoiser, SamplingOptions
from fastsync.engine import Components
from fastsync.errors import NoFaceError
from fastsync.progress import Progress

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
    frames: list[np.ndarray]  # original frames, RGB uint8 (H, W, 3)
    faces: torch.Tensor | None  # (F, 3, res, res) uint8, None when no frame has a face
    affines: list[np.ndarray | None]  # per frame: the similarity transform, None = no face
    audio: torch.Tensor  # (F, 50, 384)


class FaceTracker:
    """Landmarks -> smoothed alignment, once per *source* frame.

    When the video is ping-pong looped, a source frame is seen again in reverse; the
    reference aligns the source video once and reuses the result, so we keep each
    source frame's affine matrix (a few bytes) and re-warp with it.
    """

    def __init__(self, components: Components, workers: ThreadPoolExecutor | None):
        from fastsync.face.align import Aligner

        self.landmarker = components.landmarker
        self.aligner = Aligner(components.options.resolution)
        self.workers = workers
        self.affine_by_source: dict[int, np.ndarray | None] = {}
        self.without_face = 0
        self.several_faces = 0

    def _detect(self, frames: list[np.ndarray]):
        if self.workers is None or len(frames) == 1:
            return [self.landmarker.detect(f) for f in frames]
        return list(self.workers.map(self.landmarker.detect, frames))

    def process(self, sources: list[int], frames: list[np.ndarray]):
        """Returns per frame (face uint8 (res,res,3) | None, affine | None)."""
        from fastsync.face.align import warp_face

        new = [i for i, s in enumerate(sources) if s not in self.affine_by_source]
        detections = dict(zip(new, self._detect([frames[i] for i in new])))
        out = []
        for i, (source, frame) in enumerate(zip(sources, frames)):
            if i in detections:  # first visit: smoothing runs in source order, as in the reference
                result = detections[i]
                if result is None:
                    self.affine_by_source[source] = None
                else:
                    self.several_faces += int(result.num_faces > 1)
                    _, affine = self.aligner.align(frame, result.points3)
                    self.affine_by_source[source] = affine
            affine = self.affine_by_source[source]
            if affine is None:
                self.without_face += 1
                out.append((None, None))
            else:
                out.append((warp_face(frame, affine, self.aligner.resolution), affine))
        return out


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


class Job:
    def __init__(self, components: Components, sampling: SamplingOptions, *, progress: bool = True,
                 clock: stages.StageClock | None = None):
        self.c = components
        self.sampling = sampling
        self.fast = components.options.mode == "fast"
        self.clock = clock or stages.StageClock()
        self.progress = progress

    # -- inputs ------------------------------------------------------------------------------
    def _audio(self, audio_path: Path) -> tuple[np.ndarray, torch.Tensor]:
        from fastsync.audio.features import audio_chunks, encode_audio
        from fastsync.media.audio import check_not_silent, load_audio

        samples = load_audio(audio_path)
        check_not_silent(samples, audio_path)
        with self.clock.stage(stages.AUDIO):
            features = encode_audio(samples, self.c.whisper, self.c.device)
            chunks = audio_chunks(features).cpu()  # (N, 50, 384)
        return samples, chunks

    def _chunks(self, video: Path, audio: torch.Tensor, tracker: FaceTracker) -> Iterator[Chunk]:
        from fastsync.media.video import FrameSource

        n = audio.shape[0]
        step = self.sampling.num_frames
        source = iter(FrameSource(video, n))
        for index, start in enumerate(range(0, n, step)):
            with self.clock.stage(stages.ALIGN):
                pairs = [next(source) for _ in range(min(step, n - start))]  # (source index, frame)
                sources, frames = [p[0] for p in pairs], [p[1] for p in pairs]
                faces, affines = zip(*tracker.process(sources, frames))
                yield Chunk(index, frames, _faces_tensor(list(faces)), list(affines), audio[start:start + step])

    # -- the job ------------------------------------------------------------------------------
    def run(self, video: Path, audio_path: Path, output: Path) -> JobReport:
        from fastsync.media.video import probe_video
        from fastsync.media.writer import VideoWriter, check_output_writable

        started = time.perf_counter()
        video, audio_path, output = Path(video), Path(audio_path), Path(output)
        check_output_writable(output)
        info = probe_video(video)
        samples, audio = self._audio(audio_path)
        n = audio.shape[0]
        kept_samples = samples[: int(n / VIDEO_FPS * AUDIO_SAMPLE_RATE)]

        denoiser = self._denoiser()
        workers = ThreadPoolExecutor(self.c.options.fast.face_workers) if self.fast else None
        tracker = FaceTracker(self.c, workers)
        bar = Progress(n, "lip-sync", enabled=self.progress)
        try:
            with VideoWriter(output, info.width, info.height, fps=VIDEO_FPS, audio=kept_samples,
                             sample_rate=AUDIO_SAMPLE_RATE) as writer:
                chunks = self._chunks(video, audio, tracker)
                if self.fast and self.c.options.fast.overlap:
                    self._run_overlapped(chunks, denoiser, writer, workers, bar)
                else:
                    for chunk in chunks:
                        self._finish(chunk, self._denoise(chunk, denoiser), writer, None, bar)
                if tracker.without_face == n:
                    raise NoFaceError("no face was found in any frame", video,
                                      hint="fastsync needs a visible, roughly frontal face")
        finally:
            bar.close()
            if workers is not None:
                workers.shutdown(wait=True)
        return JobReport(output, n, time.perf_counter() - started, tracker.without_face,
                         tracker.several_faces, self.clock.as_dict())

    def _denoiser(self) -> ChunkDenoiser:
        from fastsync.accel.predictor import make_predictor

        predict, on_chunk_start = make_predictor(self.c, self.sampling)
        return ChunkDenoiser(predict, self.c.vae, self.c.scheduler, self.c.mask, self.sampling,
                             device=self.c.device, dtype=self.c.dtype,
                             batch_vae=self.fast and self.c.options.fast.batch_vae,
                             on_chunk_start=on_chunk_start)

    def _denoise(self, chunk: Chunk, denoiser: ChunkDenoiser) -> np.ndarray | None:
        if chunk.faces is None:  # nothing to lip-sync in this chunk: frames pass through
            return None
        with self.clock.stage(stages.DENOISE):
            # (F, 3, res, res) in [-1, 1]; paste-back takes it unquantised, as the reference does
            return denoiser(chunk.faces, chunk.audio).float().cpu().numpy()

    def _finish(self, chunk: Chunk, faces: np.ndarray | None, writer, workers, bar) -> None:
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
        bar.update(len(frames))

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
                faces = self._denoise(chunk, denoiser)
                if pending is not None:
                    pending.result()  # keep output order, and surface errors
                pending = finish.submit(self._finish, chunk, faces, writer, workers, bar)
            if pending is not None:
                pending.result()
        finally:
            prepare.shutdown(wait=True, cancel_futures=True)
            finish.shutdown(wait=True, cancel_futures=True)
