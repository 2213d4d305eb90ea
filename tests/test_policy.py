"""Exhaustive checks of the pure buffer policy (falcon_lite.core.policy).

Every live window (any order of statuses and origins) up to length 5 against a grid of
sizes, and every well-formed window (pool oldest, VALIDATION newest) up to length 7,
checked for: forward-only moves, the sizes after rotation, the DISFAVOURED rule, the
retention quota, and oldest-first promotion and eviction.
"""

from __future__ import annotations

import itertools
import math

import pytest

from falcon_lite.core.policy import (
    Live,
    Origin,
    Sizes,
    Status,
    batch_prior_count,
    can_move,
    prior_draws,
    required_prior,
    rotate,
)

V, T, D, X = Status.VALIDATION, Status.TRAINING, Status.DISFAVOURED, Status.TOMBSTONE
P, Q = Origin.PRIOR, Origin.PROPOSAL
LIVE_KINDS = [Live(s, o) for s in (V, T, D) for o in (P, Q)]
FRACTIONS = (0.0, 0.3, 0.5, 1.0)


def size_grid(max_val: int, max_pool: int) -> list[Sizes]:
    return [
        Sizes(v, lo, hi, f)
        for v in range(max_val + 1)
        for hi in range(1, max_pool + 1)
        for lo in range(hi + 1)
        for f in FRACTIONS
    ]


def check_rotation(live: list[Live], sizes: Sizes) -> None:
    moves = rotate(live, sizes)
    final = [moves.get(i, s.status) for i, s in enumerate(live)]
    validation = [i for i, s in enumerate(live) if s.status is V]
    n_promote = max(0, len(validation) - sizes.validation_size)
    promoted = set(validation[:n_promote])

    # forward only; VALIDATION -> TOMBSTONE only for a promoted sample (promoted, then evicted)
    for i, new in moves.items():
        old = live[i].status
        assert new != old, (live, sizes, moves)
        assert can_move(old, new) or (old is V and new is X and i in promoted), (live, sizes, moves)
    # VALIDATION keeps its newest validation_size samples
    assert [i for i in validation if final[i] is V] == validation[n_promote:]
    for i in promoted:
        assert final[i] in (T, X)

    pool_before = [i for i, s in enumerate(live) if s.status in (T, D) or i in promoted]
    pool_after = [i for i in pool_before if final[i] is not X]
    n_before, n_after = len(pool_before), len(pool_after)
    prior_before = sum(live[i].origin is P for i in pool_before)
    prior_after = sum(live[i].origin is P for i in pool_after)
    # sizes hold
    assert n_after <= sizes.max_training
    assert n_after >= min(n_before, sizes.min_training)
    # without DISFAVOURED or quota protection in play, the pool is cut exactly to max_training
    if not any(live[i].status is D for i in pool_before) and sizes.prior_fraction == 0:
        assert n_after == min(n_before, sizes.max_training)
    # DISFAVOURED kept beyond min_training only when the quota protects a prior sample
    kept_d = [i for i in pool_after if live[i].status is D]
    if kept_d and n_after > sizes.min_training:
        assert all(live[i].origin is P for i in kept_d), (live, sizes, moves)
        assert prior_after <= required_prior(sizes.prior_fraction, n_after)
    # quota: the pool's prior share stays >= f while prior samples exist
    assert prior_after >= min(prior_before, required_prior(sizes.prior_fraction, n_after)), (live, sizes)
    # eviction is oldest-first within each (origin, disfavoured or not) class
    for origin in (P, Q):
        for is_d in (False, True):
            cls = [i for i in pool_before if live[i].origin is origin and (live[i].status is D) == is_d]
            evicted = [final[i] is X for i in cls]
            assert evicted == sorted(evicted, reverse=True), (live, sizes, moves)
    # nothing outside the pool and VALIDATION moves; statuses stay in range
    assert set(moves) <= set(pool_before) | set(validation)


def test_rotate_every_window_up_to_5_over_a_size_grid() -> None:
    grid = size_grid(max_val=2, max_pool=4)
    n = 0
    for length in range(6):
        for live in itertools.product(LIVE_KINDS, repeat=length):
            for sizes in grid[:: 1 if length <= 3 else 3]:
                check_rotation(list(live), sizes)
                n += 1
    assert n > 100_000


def test_rotate_every_well_formed_window_up_to_7() -> None:
    grid = [Sizes(1, 2, 3, 0.3), Sizes(2, 3, 3, 0.5), Sizes(0, 0, 2, 1.0), Sizes(2, 1, 4, 0.0), Sizes(3, 4, 4, 0.25)]
    n = 0
    for length in range(8):
        for n_val in range(length + 1):
            for pool_status in itertools.product((T, D), repeat=length - n_val):
                for origins in itertools.product((P, Q), repeat=length):
                    statuses = list(pool_status) + [V] * n_val
                    live = [Live(s, o) for s, o in zip(statuses, origins)]
                    for sizes in grid:
                        check_rotation(live, sizes)
                        n += 1
    assert n > 50_000


def test_rotate_examples() -> None:
    # under max_training nothing is evicted (regression: a negative count evicted everything)
    live = [Live(V, P), Live(V, P), Live(V, Q), Live(V, Q)]
    assert rotate(live, Sizes(2, 4, 4, 0.2)) == {0: T, 1: T}
    # full pool: the oldest go; the quota skips a prior sample that is needed
    live = [Live(T, P), Live(T, Q), Live(T, Q), Live(V, Q)]
    assert rotate(live, Sizes(0, 3, 3, 0.5)) == {3: T, 1: X}
    # disfavoured beyond min_training go first, even when newer than a TRAINING one
    live = [Live(T, Q), Live(D, Q), Live(T, Q)]
    assert rotate(live, Sizes(0, 2, 3, 0.0)) == {1: X}
    # the quota is judged on the final pool: a protected DISFAVOURED prior sample keeps the pool
    # at 2, which needs both prior samples (regression: one was evicted, share 0.5 < f = 1)
    assert rotate([Live(V, Q), Live(D, P), Live(D, P)], Sizes(0, 0, 2, 1.0)) == {0: X}
    # promoted and evicted in one rotation ends as TOMBSTONE
    assert rotate([Live(T, Q), Live(V, Q), Live(V, Q)], Sizes(0, 1, 1, 0.0)) == {0: X, 1: X, 2: T}


def test_prior_draws_keeps_every_batch_and_the_run_at_the_share() -> None:
    for f in (0.0, 0.1, 0.2, 0.25, 1 / 3, 0.5, 1.0):
        drawn_prior = drawn_total = 0
        for n in (1, 2, 3, 5, 8, 16, 128, 7, 1):
            k = prior_draws(f, n)
            assert 0 <= k <= n
            assert k >= f * n - 1e-9  # this batch holds its share...
            assert k == 0 or k - 1 < f * n - 1e-9  # ...and no more than needed
            drawn_prior, drawn_total = drawn_prior + k, drawn_total + n
            assert drawn_prior >= f * drawn_total - 1e-9  # so the run keeps it too
    assert prior_draws(0.2, 128) == 26


def test_batch_prior_count_and_required_prior() -> None:
    assert required_prior(0.2, 128) == 26
    assert required_prior(0.25, 4) == 1
    assert required_prior(0.0, 128) == 0
    assert required_prior(1.0, 7) == 7
    for f in FRACTIONS + (0.2, 0.1):
        for b in range(1, 40):
            for avail in range(0, 50):
                k = batch_prior_count(f, b, avail)
                assert k == min(math.ceil(round(f * b, 9)), avail)
    assert batch_prior_count(0.2, 128, 0) == 0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"validation_size": -1}, "validation_size"),
        ({"min_training": -5}, "min_training"),
        ({"max_training": 0, "min_training": 0}, "max_training"),
        ({"min_training": 10, "max_training": 5}, "min_training"),
        ({"prior_fraction": 1.5}, "prior_fraction"),
        ({"prior_fraction": -0.1}, "prior_fraction"),
        ({"prior_fraction": float("nan")}, "prior_fraction"),
        ({"validation_size": True}, "validation_size"),
        ({"max_training": 2.5}, "max_training"),
    ],
)
def test_sizes_reject_bad_values_naming_the_field(kwargs, needle) -> None:
    with pytest.raises(ValueError, match=needle):
        Sizes(**kwargs)


def test_adaptive_quota_jumps_on_alarm_and_decays_to_its_floor():
    from falcon_lite.core.policy import AdaptiveQuota

    q = AdaptiveQuota(low=0.1, high=0.5, half_life=3)
    assert q.current == 0.1 and q.observe(False) == 0.1
    assert q.observe(True) == 0.5 and q.observe(True) == 0.5
    values = [q.observe(False) for _ in range(3)]
    assert values[-1] == pytest.approx(0.1 + 0.4 / 2)  # one half-life
    for _ in range(200):
        q.observe(False)
    assert q.current == 0.1  # back exactly on the floor, not 0.1000000001
    with pytest.raises(ValueError, match="low <= high"):
        AdaptiveQuota(low=0.6, high=0.5, half_life=3)
    with pytest.raises(ValueError, match="half_life"):
        AdaptiveQuota(low=0.0, high=0.5, half_life=0)
