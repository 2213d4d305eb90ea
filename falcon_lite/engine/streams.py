"""The run's counter-based random streams (no torch: simulators and samplers import this).

Every draw of step s comes from a generator seeded by (seed, stream, s): a run needs no RNG
state beyond its seed and step to resume exactly, and simulators can run anywhere in any order.
"""

from __future__ import annotations

import numpy as np

# Streams of the counter-based generators.
PRIOR, PROPOSAL, NOISE, BATCH, INIT = range(5)


def rng(seed: int, stream: int, step: int) -> np.random.Generator:
    """The generator of one stream at one step: the same numbers wherever it is made."""
    return np.random.default_rng([seed & 0xFFFFFFFF, stream, step])
