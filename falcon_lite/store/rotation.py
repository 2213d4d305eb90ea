"""`policy.rotate` over numpy arrays, for the store's hot path.

`falcon_lite.core.policy.rotate` is the contract: a readable loop over `Live` objects. On
a window of ~1500 samples it costs ~1.5 ms of Python per append; this is the same rule
with cumulative sums (~0.1 ms). tests/test_store_rotation.py checks that both give the
same moves on every window up to length 5 over a grid of sizes and on long random ones.

Rules (see policy.py): promote the oldest VALIDATION beyond ``validation_size``; drop
DISFAVOURED (oldest first) beyond ``min_training``; cut the pool to ``max_training``
(oldest first); an eviction skips a prior sample needed for ``min(P, ceil(f * n_after))``.
"""

from __future__ import annotations

import numpy as np

from falcon_lite.core.policy import Origin, Sizes, Status, required_prior

_V, _T, _D, _X = (int(s) for s in Status)
_PRIOR = int(Origin.PRIOR)


def _take_oldest(candidates: np.ndarray, is_prior: np.ndarray, count: int, spare: int) -> tuple[np.ndarray, int]:
    """The first `count` candidates a prior-protecting eviction takes; and how many are prior.

    A proposal sample is always eligible; a prior one only among the first `spare` prior
    candidates (each prior eviction uses one unit of spare).
    """
    if count <= 0 or len(candidates) == 0:
        return candidates[:0], 0
    prior = is_prior[candidates]
    eligible = ~prior | (np.cumsum(prior) <= spare)
    chosen = candidates[eligible][:count]
    return chosen, int(is_prior[chosen].sum())


def _evict(pool, disfavoured, is_prior, n_drop, n_after, n_prior, sizes: Sizes) -> np.ndarray:
    spare = n_prior - min(n_prior, required_prior(sizes.prior_fraction, n_after))
    first, used = _take_oldest(disfavoured, is_prior, n_drop, spare)
    if len(first):
        rest = pool[~np.isin(pool, first, assume_unique=True)]
    else:
        rest = pool
    second, _ = _take_oldest(rest, is_prior, len(rest) - sizes.max_training, spare - used)
    return np.concatenate([first, second])


def rotate_arrays(status: np.ndarray, origin: np.ndarray, sizes: Sizes) -> tuple[np.ndarray, np.ndarray]:
    """Moves for the live window (`status`, `origin`, oldest first): (indices, new statuses)."""
    status = np.asarray(status)
    is_prior = np.asarray(origin) == _PRIOR
    validation = np.flatnonzero(status == _V)
    promoted = validation[: max(0, len(validation) - sizes.validation_size)]
    in_pool = (status == _T) | (status == _D)
    in_pool[promoted] = True
    pool = np.flatnonzero(in_pool)
    disfavoured = pool[status[pool] == _D]
    n_prior = int(is_prior[pool].sum())
    n_drop = min(len(disfavoured), max(0, len(pool) - sizes.min_training))
    n_after = min(len(pool) - n_drop, sizes.max_training)
    while True:
        evicted = _evict(pool, disfavoured, is_prior, n_drop, n_after, n_prior, sizes)
        if len(pool) - len(evicted) <= n_after:
            break
        n_after = len(pool) - len(evicted)
    new = np.full(len(status), -1, np.int8)
    new[promoted] = _T
    new[evicted] = _X
    idx = np.flatnonzero(new >= 0)
    return idx, new[idx]
