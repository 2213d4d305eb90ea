"""The network's arithmetic with subnormal floats flushed to zero, and nobody else's.

Weight decay pulls the weights that a problem does not use towards zero, into float32's
subnormal range, where an x86 CPU multiplies many times slower: a two_moons run of 4000 steps
with `training.weight_decay = 0.1` took 130 s of CPU on an Intel Xeon, 56 s with subnormals
flushed (docs/flows.md, "At a budget of 10 000"). The CPU's flag (`torch.set_flush_denormal`:
FTZ and DAZ of x86's MXCSR) belongs to a thread and reaches everything that thread computes,
numpy and the user's simulator included, and every thread it starts later; so it is set only
around the network's own computations (`subnormals_flushed`: a training step, draws, log q) and
put back as it was found. A caller that flushes already (a bench that sets it for its whole
process) keeps its setting.

Where the CPU has no such flag (`set_flush_denormal` returns False), this changes nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import numpy as np
import torch

_SUBNORMAL = np.float32(1e-39)  # below float32's smallest normal number, 1.18e-38
_ONE = np.float32(1.0)

P = ParamSpec("P")
R = TypeVar("R")


def flushing() -> bool:
    """Whether this thread flushes subnormal floats to zero now (a subnormal times one is zero)."""
    return bool(_SUBNORMAL * _ONE == 0)


@contextmanager
def subnormals_flushed() -> Iterator[None]:
    """Flush subnormal floats to zero in this thread for the block, then put the flag back as
    it was (left on where it was on before)."""
    if flushing():
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def flushes_subnormals(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn` run inside `subnormals_flushed`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with subnormals_flushed():
            return fn(*args, **kwargs)

    return wrapper
