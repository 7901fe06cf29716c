"""The host side of a job, per 16-frame chunk: decode, landmarks, alignment, paste-back.

Shared by both ways fast mode runs it (threads beside the GPU thread, or worker
processes, see fastsync.host_processes) and by the sequential reference mode, so every
variant does the same arithmetic in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastsync import stages
from fastsync.face.cache import LandmarkCache


@dataclass
class Chunk:
    index: int
    start: int  # output frame of the chunk's first frame; the audio context is gathered for [start, start + count)
    count: int  # frames in the chunk (16, or fewer for the last)
    faces: torch.Tensor | None  # (F, 3, res, res) uint8, None when no frame has a face
    affines: list[np.ndarray | None]  # per frame: the similarity transform, None = no face
    # Original frames, RGB uint8 (H, W, 3). Empty when a worker process prepared the chunk:
    # the finishing process decodes its own copy of the video instead of receiving 6 MB a frame.
    frames: list[np.ndarray]


class FaceTracker:
    """Landmarks -> smoothed alignment, once per *source* frame.

    When the video is ping-pong looped, a source frame is seen again in reverse; the
    reference aligns the source video once and reuses the result, so we keep each
    source frame's affine matrix (a few bytes) and re-warp with it.
    """

    def __init__(self, landmarker, resolution: int, workers: ThreadPoolExecutor | None, cache: LandmarkCache,
                 near: tuple[float, float] | None = None):
        from fastsync.face.align import Aligner
        from fastsync.face.choice import face_detector

        self.landmarker = landmarker
        self.detect = face_detector(landmarker, near)  # the largest face, or the one nearest `near`
        self.aligner = Aligner(resolution)
        self.workers = workers
        self.cache = cache
        self.affine_by_source: dict[int, np.ndarray | None] = {}
        self.without_face = 0
        self.several_faces = 0

    def _detect(self, frames: list[np.ndarray]) -> list:
        if self.workers is None or len(frames) == 1:
            return [self.detect(f) for f in frames]
        return list(self.workers.map(self.detect, frames))

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
        self._landmarks(sources, frames)
        affines = []
        for source in sources:
            if source not in self.affine_by_source:  # first visit: smoothing runs in source order
                entry = self.cache.get(source)
                if entry is None:
                    self.affine_by_source[source] = None
                else:
                    points3, num_faces = entry
                    self.several_faces += int(num_faces > 1)
                    self.affine_by_source[source] = self.aligner.next_matrix(points3)
            affines.append(self.affine_by_source[source])
        self.without_face += sum(a is None for a in affines)
        # The warps are independent once the matrices are known, and OpenCV and torch
        # release the GIL inside them: the detection threads take them in parallel.
        if self.workers is None:
            faces = [self._warp(f, a) for f, a in zip(frames, affines)]
        else:
            faces = list(self.workers.map(self._warp, frames, affines))
        return list(zip(faces, affines))

    def _warp(self, frame: np.ndarray, affine: np.ndarray | None) -> np.ndarray | None:
        from fastsync.face.align import warp_face

        return None if affine is None else warp_face(frame, affine, self.aligner.resolution)


def faces_tensor(faces: list[np.ndarray | None]) -> torch.Tensor | None:
    """Stack faces (F, 3, res, res); a frame without a face borrows its nearest neighbour's,
    so the temporal layers see a plausible clip (its output is discarded)."""
    valid = [i for i, f in enumerate(faces) if f is not None]
    if not valid:
        return None
    filled = [faces[i] if faces[i] is not None else faces[min(valid, key=lambda v: abs(v - i))]
              for i in range(len(faces))]
    return torch.from_numpy(np.stack(filled)).permute(0, 3, 1, 2).contiguous()


def iter_chunks(video: Path, n: int, step: int, tracker: FaceTracker, clock: stages.StageClock,
                keep_frames: bool = True, on_chunk: Callable[[int], None] | None = None) -> Iterator[Chunk]:
    """The job's `n` output frames, `step` at a time, decoded (ping-pong looped) and aligned."""
    from fastsync.media.video import FrameSource

    source = iter(FrameSource(video, n))
    for index, start in enumerate(range(0, n, step)):
        with clock.stage(stages.ALIGN):  # decode + landmarks + warp of one chunk
            pairs = [next(source) for _ in range(min(step, n - start))]  # (source index, frame)
            sources, frames = [p[0] for p in pairs], [p[1] for p in pairs]
            faces, affines = zip(*tracker.process(sources, frames))
            chunk = Chunk(index, start, len(frames), faces_tensor(list(faces)), list(affines),
                          frames if keep_frames else [])
        if on_chunk is not None:
            on_chunk(len(frames))
        yield chunk  # outside the stage: the consumer's time is not ours


def paste(frame: np.ndarray, face: np.ndarray, affine: np.ndarray | None) -> np.ndarray:
    from fastsync.face.restore import paste_back

    return frame if affine is None else paste_back(frame, face, affine)


def paste_chunk(frames: list[np.ndarray], faces: np.ndarray | None, affines: list,
                workers: ThreadPoolExecutor | None) -> list[np.ndarray]:
    """Frames with the generated faces (F, 3, res, res) in [-1, 1] pasted back; None = none."""
    if faces is None:
        return frames
    if workers is None:
        return [paste(f, face, a) for f, face, a in zip(frames, faces, affines)]
    return list(workers.map(paste, frames, faces, affines))
