"""Calling a compiled kernel without the dispatcher's per-call typing.

A Numba dispatcher works out the type of every argument on every call. For arrays and scalars
that is quick, but a NamedTuple of two dozen arrays (the fair-price state) takes ~5 µs, more
with the cold caches of a process that wakes a thousand times a second to process a few records:
paid on every compute pass for nothing, since the state's types never change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numba.core.registry import CPUDispatcher


def entry_point(kernel: CPUDispatcher, *args: Any) -> Callable[..., Any]:
    """The machine-code entry of ``kernel`` for the types of ``args`` (compiled or loaded from
    the cache now if needed). Call it only with arguments of exactly those types (same dtypes,
    dimensions, layouts, writability): it converts them without checking."""
    sig = tuple(kernel.typeof_pyval(a) for a in args)
    kernel.compile(sig)
    return kernel.overloads[sig].entry_point
