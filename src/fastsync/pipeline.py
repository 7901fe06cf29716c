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
(paste back, encode) run in worker threads while the GPU denoises chunk k, or, with
`FastOptions.host_processes`, in two worker processes (fastsync.host_processes) so that
they never wait for the interpreter lock the GPU thread holds. The per-chunk host work
itself is in fastsync.chunks, the same code for every variant.

The audio side streams too: the job holds the samples (for the muxer) and their log-mel,
and encodes a 30 s whisper window when the first chunk that needs it is denoised, keeping
two (audio/features.py, `LazyAudioFeatures`). That runs on the job's thread, like all
GPU work: worker threads queue none.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fastsync import stages
from fastsync.chunks import Chunk, FaceTracker, iter_chunks, paste_chunk
from fastsync.denoise import ChunkDenoiser, SamplingOptions
from fastsync.engine import Components
from fastsync.errors import FastsyncError, InputError, NoFaceError
from fastsync.face.cache import LandmarkCache
from fastsync.face.choice import cache_backend
from fastsync.job_devices import ChunkDevices, ChunkRouter, RemoteFaces
from fastsync.output import OutputOptions
from fastsync.progress import Progress, ProgressCallback
from fastsync.timeline import ChunkTimeline
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
    # Job(host_profile=DIR) with the host stages in worker processes: each worker's top CPU ops
    host_top_ops: dict[str, list[dict]] | None = None
    # when the model's device worked on each chunk, and its idle time (fastsync.timeline)
    timeline: dict = field(default_factory=dict)
    # a job over several devices (fastsync.job_devices): the chunks each one denoised
    chunks_per_device: dict[str, int] | None = None
    face_near: tuple[float, float] | None = None  # the point whose nearest face was taken (face.choice)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        text = f"{self.frames} frames in {self.seconds:.1f} s ({self.fps:.1f} frames/s) -> {self.output}"
        if self.frames_without_face:
            text += f"; {self.frames_without_face} frame(s) had no face and were kept unchanged"
        if self.frames_with_several_faces:
            taken = "the largest" if self.face_near is None else "the one nearest ({:g}, {:g})".format(*self.face_near)
            text += f"; {self.frames_with_several_faces} frame(s) had several faces: {taken} was used"
        if self.chunks_per_device:
            text += "; chunks denoised on " + ", ".join(f"{d}: {n}" for d, n in self.chunks_per_device.items())
        return text


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


def host_stages_in_processes(components) -> bool:
    """Whether a job runs its host stages in worker processes: fast mode and
    `FastOptions.host_processes` for its device. Left to the default, a custom landmarker
    (which a worker cannot rebuild) keeps them in threads; asked for explicitly, the job
    then stops with an error (`Job._host_specs`)."""
    fast = components.options.fast
    if components.options.mode != "fast" or not fast.host_processes_on(components.device):
        return False
    return fast.host_processes is not None or hasattr(components.landmarker, "kind")


def _no_face(video: Path) -> NoFaceError:
    return NoFaceError("no face was found in any frame", video,
                       hint="fastsync needs a visible, roughly frontal face")


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


def make_denoiser(c: Components, sampling: SamplingOptions) -> ChunkDenoiser:
    """A job's chunk denoiser on the engine's device, in the engine's mode (its generator and
    initial noise are the job's; a device worker builds one per job too)."""
    from fastsync.accel.predictor import make_predictor

    fast = c.options.mode == "fast"
    predict, on_chunk_start = make_predictor(c, sampling)
    return ChunkDenoiser(predict, c.vae, c.scheduler, c.mask, sampling, device=c.device, dtype=c.dtype,
                         batch_vae=fast and c.options.fast.batch_vae,
                         vae_micro_batch=c.options.fast.vae_micro_batch if fast else 0,
                         on_chunk_start=on_chunk_start, max_queued=c.options.fast.max_queued if fast else 0,
                         repeated_faces=fast and c.options.fast.repeated_faces)


class Job:
    def __init__(self, components: Components, sampling: SamplingOptions, *, progress: bool = True,
                 clock: stages.StageClock | None = None, landmarks_cache: Path | None = None,
                 host_profile: Path | None = None, on_progress: ProgressCallback | None = None,
                 devices: ChunkDevices | None = None, face_near: tuple[float, float] | None = None,
                 encoding: OutputOptions | None = None):
        self.c = components
        self.encoding = encoding or components.options.output  # the file's audio track and crf (fastsync.output)
        self.face_near = face_near  # lip-sync the face nearest this point, not the largest (face.choice)
        self.devices = devices  # further devices that denoise some of the chunks (fastsync.job_devices)
        labels = [str(components.device)] if devices is None else [devices.own_label, *devices.labels]
        self._router = ChunkRouter(labels)
        self.host_profile = host_profile  # where host worker processes write their CPU traces
        self.sampling = sampling
        self.fast = components.options.mode == "fast"
        self.clock = clock or stages.StageClock()
        self.progress = progress
        self.on_progress = on_progress  # frames done per stage, beside (or instead of) the bars
        self.landmarks_cache = landmarks_cache
        self.mouth_boxes: list[list[int] | None] = []
        self.timeline = ChunkTimeline(components.device)

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
            return self._features.chunks(chunk.start, chunk.start + chunk.count)

    # -- the job ------------------------------------------------------------------------------
    def run(self, video: Path, audio_path: Path, output: Path) -> JobReport:
        from fastsync.media.audio_track import job_audio_track
        from fastsync.media.video import probe_video
        from fastsync.media.writer import VideoWriter, check_output_writable

        started = time.perf_counter()
        self.timeline.begin()
        video, audio_path, output = Path(video), Path(audio_path), Path(output)
        check_output_writable(output)
        info = probe_video(video)
        samples, audio = self._audio(audio_path)
        self._features = audio
        n = audio.num_frames
        self._mouth = (mask_rect(self.c.mask), (info.width, info.height))
        if self.devices is not None:
            self.devices.begin_job(self.sampling)
        if host_stages_in_processes(self.c):
            return self._run_in_processes(video, audio_path, output, info, n, started)

        denoiser = self._denoiser()
        workers = self._face_workers()
        cache = LandmarkCache(self.landmarks_cache, video, cache_backend(self.c.landmarker.name, self.face_near))
        tracker = FaceTracker(self.c.landmarker, self.c.options.resolution, workers, cache, near=self.face_near)
        bar = Progress(n, enabled=self.progress, on_update=self.on_progress)
        try:
            fast = self.c.options.fast
            preset, threads = (fast.x264_preset, fast.x264_threads) if self.fast else ("medium", 0)
            track = job_audio_track(self.encoding.audio, audio_path, samples, AUDIO_SAMPLE_RATE)
            with VideoWriter(output, info.width, info.height, fps=VIDEO_FPS, audio=track, crf=self.encoding.crf,
                             preset=preset, threads=threads) as writer:
                chunks = iter_chunks(video, n, self.sampling.num_frames, tracker, self.clock,
                                     on_chunk=lambda k: bar.update("faces", k))
                if self.fast and fast.overlap:
                    self._run_overlapped(chunks, denoiser, writer, workers, bar)
                else:
                    for chunk in chunks:
                        self._finish(chunk, self._denoise(chunk, denoiser), writer, None, bar)
                if tracker.without_face == n:
                    raise _no_face(video)
                with self.clock.stage(stages.WRITE):  # x264 holds its look-ahead until the flush
                    writer.close()
        finally:
            bar.close()
        cache.save()
        seconds = time.perf_counter() - started
        return JobReport(output, n, seconds, tracker.without_face, tracker.several_faces, self.clock.as_dict(),
                         self.mouth_boxes, timeline=self.timeline.as_dict(seconds),
                         chunks_per_device=self._router.counts(), face_near=self.face_near)

    def _run_in_processes(self, video: Path, audio_path: Path, output: Path, info, n: int,
                          started: float) -> JobReport:
        """The job with its host stages in two worker processes: this thread only queues GPU
        work. A hand-over thread waits for each chunk's faces to land and passes them to the
        finishing process at once, while this thread queues the next chunk, as the finishing
        thread of `_run_overlapped` does. Handed over only after the next chunk was queued,
        the last full chunk waited for the short last chunk's eager launches (0.5 s on an
        H200, bench/results/README.md) before its paste-back could start."""
        from fastsync.host_processes import HostProcesses, warm_up

        warm_up()
        prepare, finish = self._host_specs(video, audio_path, output, info, n)
        denoiser = self._denoiser()
        bar = Progress(n, enabled=self.progress, on_update=self.on_progress)
        handover = ThreadPoolExecutor(1, thread_name_prefix="hand-over")
        try:
            with HostProcesses(prepare, finish, self.clock, on_written=lambda k: bar.update("write", k)) as host:
                pending: deque[Future] = deque()
                for chunk in host.chunks():
                    bar.update("faces", chunk.count)
                    # float16 on a GPU, as the decoder made it: paste-back upcasts it exactly
                    faces = self._denoise(chunk, denoiser, upcast=False)
                    self._keep_in_flight(pending)  # in order, and surface their errors here
                    pending.append(handover.submit(self._hand_over, host, chunk, faces, bar))
                self._keep_in_flight(pending, last=True)
                if host.without_face == n:
                    raise _no_face(video)
                host.close()
        finally:
            handover.shutdown(wait=True, cancel_futures=True)
            bar.close()
        seconds = time.perf_counter() - started
        return JobReport(output, n, seconds, host.without_face, host.several_faces, self.clock.as_dict(),
                         self.mouth_boxes, host.top_ops or None, self.timeline.as_dict(seconds),
                         self._router.counts(), self.face_near)

    def _host_specs(self, video: Path, audio_path: Path, output: Path, info, n: int):
        from fastsync.host_processes import FinishSpec, PrepareSpec

        fast, landmarker = self.c.options.fast, self.c.landmarker
        if not hasattr(landmarker, "kind"):
            raise FastsyncError("FastOptions.host_processes needs the engine's own landmarker (a worker "
                                "process builds its copy); use host_processes=False with a custom one")
        prepare = PrepareSpec(video, n, self.sampling.num_frames, self.c.options.resolution, landmarker.kind,
                              landmarker.checkpoint_dir, str(landmarker.device), self.landmarks_cache,
                              fast.face_workers, self.host_profile, self.face_near)
        finish = FinishSpec(video, n, output, info.width, info.height, audio_path, fast.x264_preset,
                            fast.x264_threads, fast.face_workers, self.host_profile, self.encoding)
        return prepare, finish

    def _hand_over(self, host, chunk: Chunk, pending: Download | None, bar: Progress) -> None:
        host.finish(chunk, self._landed(chunk, pending, bar))
        self._record_mouths(chunk)

    def _landed(self, chunk: Chunk, pending: Download | None, bar: Progress) -> np.ndarray | None:
        """The chunk's generated faces once their copy to the host has landed (None: no face)."""
        faces = None
        if pending is not None:
            with self.clock.stage(stages.DENOISE):  # the GPU time not hidden behind other work
                faces = pending.numpy()
        bar.update("denoise", chunk.count)
        return faces

    def _record_mouths(self, chunk: Chunk) -> None:
        rect, size = self._mouth
        res = self.c.options.resolution
        self.mouth_boxes += [None if a is None else mouth_box(a, rect, res, size) for a in chunk.affines]

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
        return make_denoiser(self.c, self.sampling)

    def _keep_in_flight(self, pending: deque[Future], last: bool = False) -> None:
        """Before a chunk joins `pending` (or, `last`, at the end): wait, oldest first, until
        each denoising device but the one just given a chunk has at most one in flight."""
        limit = 0 if last else self._router.participants - 1
        while len(pending) > limit:
            pending.popleft().result()

    def _denoise(self, chunk: Chunk, denoiser: ChunkDenoiser, upcast: bool = True) -> Download | RemoteFaces | None:
        """Queue the chunk's device work and its copy back, here or on a further device; the
        result's `.numpy()` waits for it, so this thread goes on to queue the next chunk while
        the devices work (see fastsync.transfer)."""
        if chunk.faces is None:  # no face in the whole chunk: its frames pass through untouched
            return None
        who, skipped = self._router.take(chunk.count)
        if who > 0:
            audio = Download(self._audio_context(chunk))
            return self.devices.submit(who - 1, chunk.index, skipped, chunk.faces.numpy(), audio, upcast)
        for frames in skipped:  # chunks the other devices denoise: their random numbers
            denoiser.skip(frames)
        return self._denoise_here(chunk, denoiser, upcast)

    def _denoise_here(self, chunk: Chunk, denoiser: ChunkDenoiser, upcast: bool) -> Download:
        audio = self._audio_context(chunk)
        with self.clock.stage(stages.DENOISE), self.timeline.chunk():
            # (F, 3, res, res) in [-1, 1]; paste-back takes it unquantised, as the reference does
            result = denoiser(chunk.faces, audio)
            return Download(result.float() if upcast else result)

    def _finish(self, chunk: Chunk, pending: Download | None, writer, workers, bar) -> None:
        faces = self._landed(chunk, pending, bar)
        with self.clock.stage(stages.RESTORE):
            frames = paste_chunk(chunk.frames, faces, chunk.affines, workers)
        with self.clock.stage(stages.WRITE):
            for frame in frames:
                writer.write(frame)
        self._record_mouths(chunk)
        bar.update("write", len(frames))

    def _run_overlapped(self, chunks: Iterator[Chunk], denoiser, writer, workers, bar) -> None:
        """Prepare k+1 and finish k-1 on CPU threads while the GPU denoises chunk k.
        At most three chunks are alive at once (two more per further denoising device), so
        memory does not grow with the video."""
        prepare = ThreadPoolExecutor(1, thread_name_prefix="prepare")
        finish = ThreadPoolExecutor(1, thread_name_prefix="finish")
        pending: deque[Future] = deque()
        try:
            upcoming = prepare.submit(next, chunks, None)
            while (chunk := upcoming.result()) is not None:
                upcoming = prepare.submit(next, chunks, None)
                faces = self._denoise(chunk, denoiser)
                self._keep_in_flight(pending)  # keep output order, and surface errors
                pending.append(finish.submit(self._finish, chunk, faces, writer, workers, bar))
            self._keep_in_flight(pending, last=True)
        finally:
            prepare.shutdown(wait=True, cancel_futures=True)
            finish.shutdown(wait=True, cancel_futures=True)
