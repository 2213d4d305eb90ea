"""The run's counter-based random streams (no torch: simulators and samplers import this).

Every draw of step s comes from a generator seeded by (seed, stream, s): a run needs no RNG
state beyond its seed and step to resume exactly, and simulators can run anywhere in any order.
A step's batch simulated in chunks (`runtime.simulation_chunk`) gives chunk k the stream
(seed, NOISE, s, k): its rows do not depend on which simulator ran it, nor when.
"""

from __future__ import annotations

import numpy as np

# Streams of the counter-based generators.
PRIOR, PROPOSAL, NOISE, BATCH, INIT = range(5)


def rng(seed: int, stream: int, step: int, *within: int) -> np.random.Generator:
    """The generator of one stream at one step (and, with `within`, of one part of that step,
    e.g. a chunk of its batch): the same numbers wherever it is made.

    The three-counter form's numbers are those of every run so far. (numpy's SeedSequence
    pads its entropy with zeros to four words, so ``rng(seed, stream, step, 0)`` is the same
    generator as ``rng(seed, stream, step)``: a batch in one chunk has the unchunked numbers.)
    """
    return np.random.default_rng([seed & 0xFFFFFFFF, stream, step, *within])
