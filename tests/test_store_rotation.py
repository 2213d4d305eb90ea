"""The store's array rotation gives exactly the moves of the policy's reference `rotate`."""

from __future__ import annotations

import itertools

import numpy as np

from falcon_lite.core.policy import Live, Origin, Sizes, Status, rotate
from falcon_lite.store.rotation import rotate_arrays

KINDS = [(int(s), int(o)) for s in (Status.VALIDATION, Status.TRAINING, Status.DISFAVOURED) for o in Origin]


def same_moves(status: list[int], origin: list[int], sizes: Sizes) -> None:
    expected = rotate([Live(Status(s), Origin(o)) for s, o in zip(status, origin)], sizes)
    idx, new = rotate_arrays(np.array(status, np.int8), np.array(origin, np.int8), sizes)
    got = {int(i): Status(int(t)) for i, t in zip(idx, new)}
    assert got == expected, (status, origin, sizes)


def test_every_window_up_to_5_matches_the_policy() -> None:
    grid = [
        Sizes(v, lo, hi, f)
        for v in range(3) for hi in range(1, 5) for lo in range(hi + 1) for f in (0.0, 0.3, 0.5, 1.0)
    ]
    n = 0
    for length in range(6):
        for window in itertools.product(KINDS, repeat=length):
            status, origin = [w[0] for w in window], [w[1] for w in window]
            for sizes in grid[:: {4: 12, 5: 40}.get(length, 1)]:
                same_moves(status, origin, sizes)
                n += 1
    assert n > 80_000


def test_long_random_windows_match_the_policy() -> None:
    rng = np.random.default_rng(0)
    for _ in range(400):
        n = int(rng.integers(0, 400))
        n_val = int(rng.integers(0, n + 1))
        pool = rng.choice([1, 2], size=n - n_val, p=[0.8, 0.2])
        status = np.concatenate([pool, np.zeros(n_val, int)])
        if rng.random() < 0.3:
            rng.shuffle(status)
        origin = (rng.random(n) < rng.choice([0.05, 0.3, 0.7])).astype(int) ^ 1
        hi = int(rng.integers(1, 300))
        sizes = Sizes(int(rng.integers(0, 100)), int(rng.integers(0, hi + 1)), hi,
                      float(rng.choice([0.0, 0.1, 0.2, 0.5, 0.9, 1.0])))
        same_moves(status.tolist(), origin.tolist(), sizes)
