"""The buffer policy: which live samples change status after an append.

A pure function of the live window (the VALIDATION, TRAINING and DISFAVOURED samples,
oldest first) and the run's sizes. No database here, so it is tested exhaustively.

Statuses move forward only::

    VALIDATION -> TRAINING -> DISFAVOURED -> TOMBSTONE -> (purged)
                  TRAINING ------------------> TOMBSTONE        (eviction)

Rules, applied in order after every append:

1. VALIDATION keeps its newest ``validation_size`` samples; older ones become TRAINING.
2. The trainable pool is TRAINING + DISFAVOURED. DISFAVOURED samples are kept only while
   the pool is under ``min_training``: beyond that, the oldest go to TOMBSTONE.
3. Beyond ``max_training`` the oldest pool samples go to TOMBSTONE.
4. Quota (retention): an eviction never takes the pool's prior-origin count below
   ``min(P, ceil(f * n_after))`` where P is the prior count before eviction and n_after
   the pool's size after it; a prior sample that would break this is skipped and the
   next-oldest proposal sample goes instead.

The quota at simulation time (``prior_draws``, per batch) and at batch time (``batch_prior_count``)
are here too: all three are the same rule seen from different points.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass


class Status(enum.IntEnum):
    """A sample's lifecycle state; the integer order is the only allowed direction."""

    VALIDATION = 0
    TRAINING = 1
    DISFAVOURED = 2
    TOMBSTONE = 3


class Origin(enum.IntEnum):
    PRIOR = 0
    PROPOSAL = 1


TRAINABLE = (Status.TRAINING, Status.DISFAVOURED)

# Allowed transitions (forward only). TRAINING -> TOMBSTONE is eviction.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.VALIDATION: frozenset({Status.TRAINING}),
    Status.TRAINING: frozenset({Status.DISFAVOURED, Status.TOMBSTONE}),
    Status.DISFAVOURED: frozenset({Status.TOMBSTONE}),
    Status.TOMBSTONE: frozenset(),
}


def can_move(old: Status, new: Status) -> bool:
    return new in TRANSITIONS[old]


@dataclass(frozen=True)
class Sizes:
    """The buffer's sizes and the prior-mixing quota f."""

    validation_size: int = 0
    min_training: int = 128
    max_training: int = 128
    prior_fraction: float = 0.0

    def __post_init__(self) -> None:
        for name in ("validation_size", "min_training", "max_training"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.max_training < 1:
            raise ValueError(f"max_training must be at least 1, got {self.max_training}")
        if self.min_training > self.max_training:
            raise ValueError(
                f"min_training ({self.min_training}) must not exceed max_training ({self.max_training})"
            )
        f = self.prior_fraction
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0.0 <= f <= 1.0:
            raise ValueError(f"prior_fraction must be a number in [0, 1], got {f!r}")


@dataclass(frozen=True)
class Live:
    """One live sample as the policy sees it."""

    status: Status
    origin: Origin


def required_prior(f: float, n: int) -> int:
    """ceil(f * n), robust to float noise (0.2 * 128 = 25.6000...01 must give 26, 0.25 * 4 = 1)."""
    return math.ceil(round(f * n, 9))


def rotate(live: Sequence[Live], sizes: Sizes) -> dict[int, Status]:
    """Return ``{index into live: new status}`` for every sample the rules above move.

    ``live`` is oldest first and holds only VALIDATION, TRAINING and DISFAVOURED samples.
    A VALIDATION sample promoted and evicted in the same rotation ends as TOMBSTONE.
    """
    moves: dict[int, Status] = {}
    validation = [i for i, s in enumerate(live) if s.status is Status.VALIDATION]
    n_promote = max(0, len(validation) - sizes.validation_size)
    promoted = set(validation[:n_promote])
    moves.update((i, Status.TRAINING) for i in validation[:n_promote])

    pool = [i for i, s in enumerate(live) if s.status in TRAINABLE or i in promoted]
    n_prior = sum(live[i].origin is Origin.PRIOR for i in pool)
    disfavoured = [i for i in pool if live[i].status is Status.DISFAVOURED]
    n_drop_disfavoured = min(len(disfavoured), max(0, len(pool) - sizes.min_training))
    n_after = min(len(pool) - n_drop_disfavoured, sizes.max_training)
    # The quota is judged on the pool's final size. A protected prior sample that is not
    # evicted leaves the pool bigger than planned, which may need more prior samples
    # kept: re-plan with the bigger size until it holds (n_after only grows).
    while True:
        evicted = _evict(live, pool, disfavoured, n_drop_disfavoured, n_after, n_prior, sizes)
        if len(pool) - len(evicted) <= n_after:
            break
        n_after = len(pool) - len(evicted)
    moves.update((i, Status.TOMBSTONE) for i in evicted)
    return moves


def _evict(
    live: Sequence[Live], pool: list[int], disfavoured: list[int], n_drop_disfavoured: int,
    n_after: int, n_prior: int, sizes: Sizes,
) -> set[int]:
    """Rules 2-4 for a planned final pool size `n_after`: the set of evicted indices."""
    keep_prior = min(n_prior, required_prior(sizes.prior_fraction, n_after))
    prior_spare = n_prior - keep_prior
    evicted: set[int] = set()

    def evict_oldest(candidates: list[int], count: int) -> None:
        nonlocal prior_spare
        for i in candidates:
            if count <= 0:  # a pool under max_training asks for a negative count: evict none
                return
            if i in evicted:
                continue
            if live[i].origin is Origin.PRIOR:
                if prior_spare == 0:
                    continue
                prior_spare -= 1
            evicted.add(i)
            count -= 1

    evict_oldest(disfavoured, n_drop_disfavoured)
    evict_oldest(pool, len(pool) - len(evicted) - sizes.max_training)
    return evicted


def prior_draws(f: float, n: int) -> int:
    """How many of a batch of `n` simulations must come from the prior (simulation quota).

    Every batch carries its own share, ceil(f * n), which keeps the run's cumulative share
    >= f too. Counting per batch rather than over the run matters: after an all-prior
    warm-up a cumulative count would draw no prior samples for thousands of steps. It also
    makes a step's draws depend on (seed, step) alone.
    """
    return min(n, required_prior(f, n))


def batch_prior_count(f: float, batch_size: int, prior_available: int) -> int:
    """Prior-origin samples a training batch must hold: ceil(f * B), or all there are."""
    return min(required_prior(f, batch_size), prior_available) if prior_available else 0


@dataclass
class AdaptiveQuota:
    """The adaptive prior-mixing quota: raised to `high` while the explosion alarm is up,
    decaying back to `low` with a half-life of `half_life` observations once it clears.

    >>> q = AdaptiveQuota(low=0.0, high=0.4, half_life=1)
    >>> q.observe(True), q.observe(False), q.observe(False)
    (0.4, 0.2, 0.1)
    """

    low: float
    high: float
    half_life: int
    current: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"need 0 <= low <= high <= 1, got low={self.low!r}, high={self.high!r}")
        if self.half_life < 1:
            raise ValueError(f"half_life must be at least 1, got {self.half_life!r}")
        if self.current is None:
            self.current = self.low

    def observe(self, raised: bool) -> float:
        """Take the alarm's state after one batch; return the quota for what follows."""
        if raised:
            self.current = self.high
        else:
            excess = (self.current - self.low) * 0.5 ** (1.0 / self.half_life)
            self.current = self.low + (excess if excess > 1e-4 else 0.0)
        return self.current
