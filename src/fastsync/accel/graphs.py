"""CUDA graphs for fixed-shape calls (the denoise step), applied from outside the model.

A graph replays a recorded sequence of kernels with no Python or launch overhead. It
needs static memory: inputs are copied into buffers that were recorded, and outputs
live in the graph's private pool, valid until the next replay. That is exactly the
life of a noise prediction inside the DDIM loop, and of DeepCache's deep feature
between its full step and the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class GraphedCall:
    """Record `fn(*example_inputs)` once; call with same-shaped tensors to replay it.

    An input that *is* the recorded buffer (same storage) is not copied: that is how one
    graph's output feeds another graph's input for free.
    """

    def __init__(self, fn: Callable[..., Tensor | tuple[Tensor, ...]], example_inputs: Sequence[Tensor],
                 *, shared: Sequence[int] = (), warmup: int = 2, pool=None):
        # Inputs listed in `shared` are used as they are (another graph's static output);
        # the others get fresh buffers.
        self.inputs = [x if i in shared else x.clone() for i, x in enumerate(example_inputs)]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):  # lets cuDNN/cuBLAS pick algorithms outside the recording
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool), torch.no_grad():
            self.outputs = fn(*self.inputs)

    def matches(self, inputs: Sequence[Tensor]) -> bool:
        return all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(self.inputs, inputs))

    def __call__(self, *inputs: Tensor):
        for buffer, value in zip(self.inputs, inputs):
            if buffer.data_ptr() != value.data_ptr():
                buffer.copy_(value)
        self.graph.replay()
        return self.outputs

    def pool(self):
        return self.graph.pool()
