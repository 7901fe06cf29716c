"""Build every component once (load or random), ready to run many jobs.

Two modes share the same weights and seed:
- ``reference``: the reference implementation's behaviour — its dtype rule (fp16 only
  when the GPU's compute capability is above 7, else fp32), eager PyTorch, one frame
  at a time for faces, separate VAE calls, DeepCache with the reference's interval.
- ``fast``: everything fastsync adds (see fastsync.accel), each piece switchable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastsync.checkpoints import CheckpointLayout
from fastsync.config import VERSIONS, face_resolution, unet_config_for
from fastsync.errors import FastsyncError
from fastsync.output import OutputOptions


@dataclass(frozen=True)
class FastOptions:
    """Switches for the fast path; each is proven equal to the plain path by a test."""

    batch_vae: bool = True  # masked + reference faces in one VAE encode call
    overlap: bool = True  # decode/align, GPU denoise and paste/encode run concurrently
    channels_last: bool = True  # NDHWC activations: the per-frame reshapes become free views
    compile: bool = True  # regional torch.compile of the repeated UNet blocks (CUDA only)
    # Keep the compiled regions on disk whole (Dynamo's guards and bytecode with inductor's
    # output), so a second process loads them instead of tracing again (torch >= 2.10;
    # on an older torch, compile alone applies). fastsync.accel.precompile.
    precompile: bool = True
    # Processes that compile the warm-up's regions side by side (fastsync.accel.parallel_compile);
    # -1: half the cores, at most 8; 0 or 1: one after another in this process. Needs precompile.
    compile_workers: int = -1
    cuda_graphs: bool = True  # capture the fixed-shape denoise steps (CUDA only)
    face_workers: int = 4  # threads for face detection and paste-back
    vae_micro_batch: int = 4  # frames per VAE call: bounds peak GPU memory at 512 px
    # libx264 preset. The reference's ffmpeg uses the default, "medium". "veryfast" encodes
    # 1080x1920 ~3x faster but its different compression noise costs ~0.01 SSIM against the
    # reference's output (bench/results/e2e_h200_veryfast.json); encoding overlaps the GPU
    # work, so "medium" costs little wall time.
    x264_preset: str = "medium"
    # libx264 threads (0: its default, 1.5 per core). 1 makes the encoded file reproducible
    # bit for bit, which tests comparing whole jobs rely on.
    x264_threads: int = 0
    # Run the host stages (decode+align, paste+encode) in two worker processes instead of
    # threads, so they never wait for the GIL that the GPU thread holds while it launches
    # kernels (fastsync.host_processes). On an H100 whose host was slow they made the demo1
    # job 1.30x faster (16.74 against 21.77 s, bench/results/e2e_h100_session17_hosts.json;
    # 1.07x on an H200, e2e_h200.json). On a CPU the model itself needs the cores.
    # None: processes for a fast job on a GPU, threads on a CPU or with a custom landmarker
    # (which a worker cannot rebuild). The workers run fastsync's code only, never the
    # program's main script, so a script needs no `if __name__ == "__main__":` for them.
    host_processes: bool | None = None
    # Temporal attention has 16-token sequences in huge batches. SDPA's kernels tile for long
    # sequences (its memory-efficient one is the best of them there); fastsync's Triton
    # kernel holds a whole sequence per program: 4.2x faster at 64x64 latents and the UNet
    # forward 107.4 -> 98.4 ms (bench/results/temporal_attention_h200.json,
    # unet_h200_short_attention.json). CUDA only; elsewhere the model's default is kept.
    motion_attention: str = "triton-short"
    # Let cuDNN time its convolution algorithms once per shape, per process. Off, as in the
    # reference: on an H200 the timing added 8.0 s to the first UNet forward and 2.5 s to
    # the first VAE decode of every process, and the calls after it were no faster (UNet
    # 177.0 against 177.4 ms, decode 74.2 against 73.8 ms; bench/results/cudnn_h200.json).
    cudnn_benchmark: bool = False
    # Intra-op threads for the CPU-side torch and OpenCV work (warps, paste-back) when the
    # model runs on a GPU; 0 keeps the libraries' default of one per core. Fast mode already
    # runs that work in several threads beside x264's, so per-op thread teams oversubscribe.
    cpu_threads: int = 0
    # Denoising steps / VAE micro-batches the job thread may queue ahead of the GPU (0: no
    # limit). Past the launch queue's depth a launch blocks holding the GIL, which stalls
    # the decode/warp and paste/encode threads (fastsync.transfer.LaunchThrottle).
    max_queued: int = 2
    # The denoiser's UNet batch is a classifier-free-guidance pair [zero audio, audio] with
    # equal latents. The UNet computes the shared rows once up to the first cross-attention
    # and gives the zero-audio rows' cross-attention its exact value, to_out's bias, without
    # computing it (UNet3DConditionModel.forward). Same values; tests/test_cfg_pair.py.
    cfg_pair: bool = True
    # The norms inside the compiled regions (UNet and VAE) compute from per-channel moments,
    # which a channels_last tensor gives inductor in memory order (fastsync.accel.group_norm).
    # Same statistics, other summation order. On an H200 the UNet's CFG forward took 95.8
    # against 101.1 ms, a chunk's VAE work (ResNet regions) 0.224 against 0.288 s
    # (bench/results/unet_h200_column_gn.json, vae_h200_column_gn.json). Needs compile
    # (CUDA only); a region run uncompiled (a job's short last chunk) keeps PyTorch's norm.
    # tests/test_group_norm.py.
    column_group_norm: bool = True
    # The UNet's linear layers inside the compiled regions add their bias in the kernel that
    # reads their output, instead of in cuBLAS's epilogue, which is slow on the short-K shapes
    # (fastsync.accel.linear_bias). One more fp16 rounding of each product. Needs compile
    # (CUDA only; uncompiled, the layer stays nn.Linear); tests/test_linear_bias.py. On an
    # H100 the UNet's CFG forward took 94.2 against 97.8 ms
    # (bench/results/unet_h100_split_bias.json; bench_unet --bias-in-epilogue).
    split_linear_bias: bool = True
    # The UNet's layers between the compiled blocks are compiled too: its three upsamplers
    # and its head (GroupNorm, SiLU, conv_out), which runs on every denoising step, cached
    # DeepCache steps included (fastsync.accel.glue). Eagerly, PyTorch's GroupNorm and
    # nearest upsampling are slow on channels_last tensors. On an H100 the CFG forward took
    # 94.7 against 96.1 ms, a chunk's GPU time about 0.985 against 1.010 s, the demo1 job
    # 17.04 against 17.37 s (bench/results/unet_h100_glue.json, e2e_h100_glue_on/off.json).
    # Needs compile (CUDA only); the head's norm computes from per-channel moments with
    # column_group_norm.
    compile_glue: bool = True
    # Equal consecutive faces are VAE-encoded once, across chunks too (fastsync.accel.repeats):
    # a photo given as the video repeats one face in every frame, a looped video its end
    # frames at each turn. Every face keeps its own posterior sample, so only the rounding can
    # change (tests/test_repeats.py). After its first chunk a photo's chunks encode no face,
    # where a video's chunk encodes 32: on an H100 a photo's chunk took 0.888 s against 0.985 s
    # off, a video's without repeats 0.984 against 0.983 s (bench/results/repeats_h100.json).
    repeated_faces: bool = True

    def host_processes_on(self, device: torch.device) -> bool:
        """Whether a fast job on `device` runs its host stages in worker processes."""
        return device.type == "cuda" if self.host_processes is None else self.host_processes


@dataclass(frozen=True)
class EngineOptions:
    version: str = "1.6"
    checkpoint_dir: Path = Path("checkpoints")
    random_weights: bool = False
    # "tiny": a narrow UNet and VAE for CPU runs, with random weights or from a checkpoint
    # folder that holds tiny weights in the official layout (what the tests load).
    model_size: str = "full"
    device: str | None = None
    face_backend: str = "auto"
    mode: str = "fast"  # "fast" | "reference"
    dtype: str | None = None  # None = the mode's rule; or "float32" / "float16" / "bfloat16"
    seed: int = 0  # weights seed for --random-weights (the noise seed is a run option)
    # Further devices that denoise a job's chunks beside `device`, one worker process each
    # with its own copy of the models (fastsync.job_devices; `fastsync run --devices`).
    chunk_devices: tuple[str, ...] = ()
    output: OutputOptions = field(default_factory=OutputOptions)
    fast: FastOptions = field(default_factory=FastOptions)

    def __post_init__(self):
        if self.version not in VERSIONS:
            raise FastsyncError(f"unknown LatentSync version {self.version!r}; choose 1.5 or 1.6")
        if self.model_size not in ("full", "tiny"):
            raise FastsyncError(f"unknown model size {self.model_size!r}; choose full or tiny")
        if self.mode not in ("fast", "reference"):
            raise FastsyncError(f"unknown mode {self.mode!r}; choose fast or reference")

    @property
    def resolution(self) -> int:
        return face_resolution(self.version, self.model_size)


def pick_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FastsyncError(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
    return device


def pick_dtype(options: EngineOptions, device: torch.device) -> torch.dtype:
    if options.dtype is not None:
        return getattr(torch, options.dtype)
    if device.type != "cuda":
        return torch.float32
    # The reference's rule: fp16 only where the GPU has fast fp16 (compute capability > 7).
    return torch.float16 if torch.cuda.get_device_capability(device)[0] > 7 else torch.float32


@dataclass
class Components:
    unet: torch.nn.Module
    vae: torch.nn.Module
    whisper: torch.nn.Module
    scheduler: object
    landmarker: object
    mask: torch.Tensor  # (res, res) float, 1 = keep reference pixels
    device: torch.device
    dtype: torch.dtype
    options: EngineOptions
    # Built lazily and kept across jobs: predictors with their captured graphs, by shape.
    cache: dict = field(default_factory=dict)
    # Seconds each part of loading took (unet, vae, whisper, landmarker, fast_setup).
    load_timings: dict = field(default_factory=dict)


class LazyLandmarker:
    """Builds the landmarker on its first detection.

    Runs whose faces all come from a landmark cache never load a face model, so they
    also work where the face model's files are absent.
    """

    def __init__(self, kind: str, checkpoint_dir: Path, device: torch.device):
        from fastsync.face.landmarks import insightface_available

        if kind == "auto":
            kind = "insightface" if insightface_available(checkpoint_dir) else "dlib"
        self.kind, self.checkpoint_dir, self.device = kind, checkpoint_dir, device
        self._landmarker = None
        if kind == "insightface":  # fail now, not mid-job, when its files are missing
            self._build()

    def _build(self):
        if self._landmarker is None:
            from fastsync.face.landmarks import make_landmarker

            self._landmarker = make_landmarker(self.kind, self.checkpoint_dir, self.device)
        return self._landmarker

    @property
    def name(self) -> str:
        if self.kind == "dlib":
            from fastsync.face.dlib_backend import DlibLandmarker

            return DlibLandmarker.name
        return self._build().name

    def detect(self, frame, near=None):
        """The largest face, or with `near` (x, y) the one nearest that point (fastsync.face.choice)."""
        landmarker = self._build()
        return landmarker.detect(frame) if near is None else landmarker.detect(frame, near=near)


def load_components(options: EngineOptions) -> Components:
    from fastsync.devices import make_current

    device = pick_device(options.device)
    # --device cuda:1 must not put streams and graphs on GPU 0 (untested on a real second
    # GPU: the machines lent so far have one).
    make_current(device)
    compile_workers = None
    if options.mode == "fast":
        from fastsync.accel.setup import prestart_compile_workers

        compile_workers = prestart_compile_workers(options.fast, device)
    try:
        components = _load(options, device)
    except BaseException:
        if compile_workers:
            from fastsync.accel.parallel_compile import stop_workers

            stop_workers(compile_workers)
        raise
    if compile_workers:
        components.cache["compile_workers"] = compile_workers  # for the warm-up
    return components


def _load(options: EngineOptions, device: torch.device) -> Components:
    from fastsync.components import load_vae, make_scheduler, random_vae
    from fastsync.face.mask import mask_for_resolution
    from fastsync.models.loading import load_unet, random_unet
    from fastsync.models.whisper import load_whisper_encoder, random_whisper_encoder

    dtype = pick_dtype(options, device)
    layout = CheckpointLayout(Path(options.checkpoint_dir))
    config = unet_config_for(options.version, options.model_size)

    from fastsync.stages import StageClock

    clock = StageClock(sync_cuda=device.type == "cuda")  # GPU work counts in its part
    if options.random_weights:
        with clock.stage("unet"):
            unet = random_unet(config, seed=options.seed, device=device, dtype=dtype)
        with clock.stage("vae"):
            vae = random_vae("tiny" if options.model_size == "tiny" else "full", seed=options.seed)
            vae = vae.to(device=device, dtype=dtype)
        with clock.stage("whisper"):
            whisper = random_whisper_encoder(seed=options.seed, dtype=dtype).to(device=device)
    else:
        with clock.stage("unet"):
            unet = load_unet(layout.require(layout.unet, options.version), config, device=device, dtype=dtype)
        with clock.stage("vae"):
            vae = load_vae(layout.vae_dir).to(device=device, dtype=dtype)
        with clock.stage("whisper"):
            # Whisper runs in the job's dtype, as the reference does (fp16 on a recent GPU).
            whisper = load_whisper_encoder(layout.require(layout.whisper, options.version), dtype=dtype)
            whisper = whisper.to(device=device)
    with clock.stage("landmarker"):
        landmarker = LazyLandmarker(options.face_backend, layout.root, device)
    mask = torch.from_numpy(mask_for_resolution(options.resolution)).float()
    components = Components(unet.eval(), vae, whisper.eval(), make_scheduler(), landmarker, mask, device, dtype,
                            options)
    if options.mode == "fast":
        from fastsync.accel.setup import prepare_fast

        with clock.stage("fast_setup"):
            prepare_fast(components)
    components.load_timings = {name: round(seconds, 3) for name, seconds in clock.seconds.items()}
    return components


def with_mode(options: EngineOptions, mode: str) -> EngineOptions:
    return dataclasses.replace(options, mode=mode)
