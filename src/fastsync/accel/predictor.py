"""Choose how the UNet is called for each denoising step.

The plain path calls the model (through DeepCache when its interval is > 1, as the
reference does). Fast mode adds, from outside the model and each behind a switch in
`FastOptions`: channels_last activations, regional torch.compile, and CUDA graphs of
the full and the cached DeepCache steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor

from fastsync.accel.deepcache import DeepCache
from fastsync.denoise import NoisePredictor, SamplingOptions
from fastsync.engine import Components


class PlainPredictor:
    """DeepCache with the given interval (1 = the plain model), eager."""

    def __init__(self, unet, interval: int, *, cfg_pair: bool = False):
        self.cache = DeepCache(unet, interval=max(interval, 1), cfg_pair=cfg_pair)

    def reset(self) -> None:
        self.cache.reset()

    def __call__(self, sample: Tensor, t: Tensor, audio: Tensor, step: int) -> Tensor:
        return self.cache(sample, t, audio, step)


class FastPredictor(PlainPredictor):
    """channels_last inputs; CUDA graphs for the standard chunk shape; eager otherwise.

    A job's chunks all have `num_frames` frames except perhaps the last: that one runs
    eagerly (with compiled regions forced eager) rather than paying for a new capture.
    """

    def __init__(self, unet, interval: int, *, channels_last: bool, cuda_graphs: bool, compiled: bool,
                 num_frames: int, cfg_pair: bool = False):
        super().__init__(unet, interval, cfg_pair=cfg_pair)
        self.unet = unet
        self.channels_last = channels_last
        self.cuda_graphs = cuda_graphs and torch.cuda.is_available()
        self.compiled = compiled
        self.num_frames = num_frames
        self.graphs: dict[tuple, tuple] = {}
        self.deep: Tensor | None = None

    def reset(self) -> None:
        super().reset()
        self.deep = None

    # The two DeepCache passes as pure functions of their inputs, for capture.
    def _full(self, sample, t, audio):
        u, cfg_pair = self.unet, self.cache.cfg_pair
        deep, stem, temb = u.features(sample, t, audio, cfg_pair)
        return u.finish(deep, stem, temb, audio, u.null_rows(sample, cfg_pair)), deep

    def _shallow(self, sample, t, audio, deep):
        u = self.unet
        temb = u.embed_time(t, sample)
        return u.finish(deep, u.stem(sample), temb, audio, u.null_rows(sample, self.cache.cfg_pair))

    def _graphs_for(self, sample: Tensor, t: Tensor, audio: Tensor):
        from fastsync.accel.graphs import GraphedCall

        key = (tuple(sample.shape), tuple(audio.shape), sample.dtype)
        if key not in self.graphs:
            full = GraphedCall(self._full, (sample, t, audio))
            shallow = None
            if self.cache.interval > 1:
                shallow = GraphedCall(self._shallow, (sample, t, audio, full.outputs[1]), shared=(3,))
            self.graphs[key] = (full, shallow)
        return self.graphs[key]

    def capture(self, sample: Tensor, t: Tensor, audio: Tensor) -> None:
        """Record the graphs for this shape now (warm-up), so the first chunk does not pay."""
        if self.cuda_graphs:
            self._graphs_for(self._layout(sample), t, audio)

    def _layout(self, sample: Tensor) -> Tensor:
        return sample.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else sample

    def __call__(self, sample: Tensor, t: Tensor, audio: Tensor, step: int) -> Tensor:
        sample = self._layout(sample)
        standard = sample.shape[2] == self.num_frames
        if not standard:
            with one_off_shapes(self.compiled):
                return super().__call__(sample, t, audio, step)
        if not self.cuda_graphs:
            return super().__call__(sample, t, audio, step)
        full, shallow = self._graphs_for(sample, t, audio)
        if self.cache.is_full_step(step):
            noise, self.deep = full(sample, t, audio)
            return noise
        if self.deep is None:
            raise RuntimeError(f"DeepCache: step {step} reuses features but no full step ran in this chunk")
        return shallow(sample, t, audio, self.deep)


@contextlib.contextmanager
def one_off_shapes(compiled: bool):
    """For a chunk shape seen once per job: compiled regions run eagerly, and cuDNN takes
    its heuristic's algorithms: timing every convolution of a new shape pays only when the
    shape comes back, and a job's short last chunk has a length of its own."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        if compiled:
            from fastsync.accel.compile import eager_context

            with eager_context():
                yield
        else:
            yield
    finally:
        torch.backends.cudnn.benchmark = before


def make_predictor(c: Components, sampling: SamplingOptions) -> tuple[NoisePredictor, Callable[[], None]]:
    """Return (predict, on_chunk_start); on_chunk_start drops DeepCache's per-chunk state.
    Predictors live on the components, so CUDA graphs are captured once per engine."""
    key = ("predictor", sampling.deepcache_interval, sampling.num_frames, c.options.fast.cfg_pair)
    if key not in c.cache:
        c.cache[key] = _build(c, sampling)
    predictor = c.cache[key]
    return predictor, predictor.reset


def graphless_predictor(c: Components, sampling: SamplingOptions) -> tuple[NoisePredictor, Callable[[], None]]:
    """A predictor like the job's but never capturing CUDA graphs, and not kept: for a warm-up
    pass whose regions run eagerly (a graph captured then would keep the eager kernels)."""
    predictor = _build(c, sampling, cuda_graphs=False)
    return predictor, predictor.reset


def _build(c: Components, sampling: SamplingOptions, *, cuda_graphs: bool | None = None) -> PlainPredictor:
    """cuda_graphs: None = as the options say."""
    fast = c.options.fast
    if c.options.mode != "fast":
        predictor = PlainPredictor(c.unet, sampling.deepcache_interval)
    else:
        predictor = FastPredictor(c.unet, sampling.deepcache_interval, channels_last=fast.channels_last,
                                  cuda_graphs=fast.cuda_graphs if cuda_graphs is None else cuda_graphs,
                                  compiled=fast.compile,
                                  num_frames=sampling.num_frames, cfg_pair=fast.cfg_pair)
    return predictor
