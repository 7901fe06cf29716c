"""Swap a module's class in place: fast set-up's way of changing how a layer computes.

The instance keeps its parameters, buffers, hooks and state-dict keys; only `forward`
changes. The swapped classes stay importable by name, so compiled regions keyed on their
classes (accel.precompile) and compile workers that unpickle them see the same thing.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def swap_class(module: nn.Module, plain: type, replacement: type,
               when: Callable[[nn.Module], bool] = lambda m: True) -> int:
    """Every module under `module` of exactly class `plain` (subclasses are left alone) for
    which `when` holds becomes a `replacement`; returns how many."""
    count = 0
    for child in module.modules():
        if type(child) is plain and when(child):
            child.__class__ = replacement
            count += 1
    return count


def swap_in_regions(model: nn.Module, regions: tuple[type, ...], swap: Callable[[nn.Module], int]) -> int:
    """`swap` applied to every module of one of `regions` (the compiled ones); returns the count."""
    return sum(swap(module) for module in model.modules() if isinstance(module, regions))
