"""Run a module the way a compiled region runs it, without generating code.

Dynamo traces the module (so `torch.compiler.is_compiling()` holds inside it, as in fast
mode's compiled regions) and its "eager" backend runs the captured graph with PyTorch's own
ops: what a swapped layer computes inside a region, checkable on a CPU in a few seconds.
"""

from torch import nn

from fastsync.accel.compile import configure_inductor


def traced(module: nn.Module) -> nn.Module:
    """`module`, compiled in place with the eager backend; returns it."""
    configure_inductor()  # fast mode's recompile limits: many regions share one forward
    module.compile(backend="eager", fullgraph=True, dynamic=False)
    return module


def trace_regions(model: nn.Module, kinds: tuple[type, ...]) -> int:
    """`traced` for every module of one of `kinds` under `model`; returns how many."""
    modules = [m for m in model.modules() if isinstance(m, kinds)]
    for module in modules:
        traced(module)
    return len(modules)
