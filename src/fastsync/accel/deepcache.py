"""DeepCache for the 3D UNet, with the semantics of the reference (DeepCache 0.1.1,
`DeepCacheSDHelper.set_params(cache_interval=3, cache_branch_id=0)`), without patching
the model: this wrapper calls the model's own stage methods.

What the reference does, derived from its module wrapping with branch 0:

- A step is "full" when its index in the scheduler's timestep list is a multiple of the
  interval (0, 3, 6, ... for interval 3; every chunk restarts at index 0). A full step is
  the plain forward pass.
- On every other step the wrapped down blocks, the mid block and all up blocks but the
  last return what they returned on the last full step, and so do the first two
  (ResNet, transformer) pairs of the last up block. What is computed afresh: the time
  embedding, conv_in, the last layer of the last up block (ResNet on the concatenation
  of the deep feature and the new conv_in output, transformer with the current audio,
  motion module) and the output head.
- The deep feature reaching that last layer is the output of the last up block's
  second-to-last motion module. The reference re-runs the motion modules of the last up
  block's first layers (they are not wrapped), but on cached inputs: a motion module is a
  pure function of its input (no time embedding, no audio, no state), so it reproduces
  exactly the tensor it produced on the full step. We cache that output instead and skip
  the recomputation; the result is the same.

So a cached step here = stages 1, 2, 6, 7 of `UNet3DConditionModel.forward` with stage 5's
output taken from the last full step.
"""

from __future__ import annotations

from torch import Tensor

from fastsync.models.unet3d import UNet3DConditionModel


class DeepCache:
    """Call as `predict(sample, timestep, encoder_hidden_states, step_index)`; `reset()` per chunk.

    interval=1 makes every step full, i.e. exactly the plain model.
    """

    def __init__(self, unet: UNet3DConditionModel, interval: int = 3, *, cfg_pair: bool = False):
        """cfg_pair: every call's batch is a CFG pair (see UNet3DConditionModel.forward)."""
        if interval < 1:
            raise ValueError(f"DeepCache interval must be >= 1, got {interval}")
        self.unet = unet
        self.interval = interval
        self.cfg_pair = cfg_pair
        self.deep: Tensor | None = None  # stage-5 output of the last full step, (B, C0, F, H, W)

    def reset(self) -> None:
        """Drop the cached feature; call at the start of every chunk."""
        self.deep = None

    def is_full_step(self, step_index: int) -> bool:
        return step_index % self.interval == 0

    def __call__(
        self, sample: Tensor, timestep: Tensor | int, encoder_hidden_states: Tensor, step_index: int
    ) -> Tensor:
        if self.is_full_step(step_index):
            return self.full_step(sample, timestep, encoder_hidden_states)
        return self.cached_step(sample, timestep, encoder_hidden_states, step_index)

    def full_step(self, sample: Tensor, timestep: Tensor | int, encoder_hidden_states: Tensor) -> Tensor:
        """The plain forward pass, keeping the deep feature for the following cached steps."""
        unet, audio = self.unet, encoder_hidden_states
        unet.check_inputs(sample, audio)
        # 1-5. time embedding, stem, encoder, bottleneck, decoder up to its last layer
        deep, stem, temb = unet.features(sample, timestep, audio, self.cfg_pair)  # deep (B, C0, F, H, W)
        self.deep = deep
        # 6-7. last decoder layer and head
        return unet.finish(deep, stem, temb, audio, unet.null_rows(sample, self.cfg_pair))

    def cached_step(
        self, sample: Tensor, timestep: Tensor | int, encoder_hidden_states: Tensor, step_index: int
    ) -> Tensor:
        """Shallow path only: stem, last decoder layer on the cached deep feature, head."""
        unet, audio, deep = self.unet, encoder_hidden_states, self.deep
        if deep is None:
            raise RuntimeError(
                f"DeepCache: step {step_index} reuses cached features but no full step ran since reset(); "
                f"start every chunk at step_index 0"
            )
        unet.check_inputs(sample, audio)
        if sample.shape[0] != deep.shape[0] or sample.shape[2:] != deep.shape[2:]:
            raise RuntimeError(
                f"DeepCache: sample {tuple(sample.shape)} does not match the cached feature "
                f"{tuple(deep.shape)}; call reset() when the batch or clip shape changes"
            )
        # 1-2. time embedding and stem, from this step's inputs
        temb = unet.embed_time(timestep, sample)
        stem = unet.stem(sample)
        # 6-7. last decoder layer on (cached deep feature ++ fresh stem), then the head
        return unet.finish(deep, stem, temb, audio, unet.null_rows(sample, self.cfg_pair))
