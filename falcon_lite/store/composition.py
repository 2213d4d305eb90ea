"""A buffer's composition: counts by status and origin, purged, rejected, the pool's prior share.

One pure function over the ``status_counts`` rows the store keeps in the same transaction
as every sample change, so that nothing scans ``samples``. The store and the REST API both
compute it here; each builds its own view of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from falcon_lite.core.policy import TRAINABLE, Origin, Status
from falcon_lite.core.samples import ORIGIN_NAMES


@dataclass(frozen=True)
class Composition:
    """``counts[STATUS][origin name]``; ``total`` counts everything ever stored (purged included)."""

    counts: dict[str, dict[str, int]]
    purged: int
    rejected: int
    total: int
    prior_share_trainable: float


def compose(purged: int, rejected: int, rows: Iterable[tuple[int, int, int]]) -> Composition:
    """The composition from ``(status, origin, n)`` rows and the run's purged and rejected counts."""
    counts = {s.name: {name: 0 for name in ORIGIN_NAMES.values()} for s in Status}
    for status, origin, n in rows:
        counts[Status(status).name][ORIGIN_NAMES[Origin(origin)]] += int(n)
    pool = [counts[s.name] for s in TRAINABLE]
    n_pool = sum(c["prior"] + c["proposal"] for c in pool)
    share = sum(c["prior"] for c in pool) / n_pool if n_pool else 0.0
    total = sum(c["prior"] + c["proposal"] for c in counts.values()) + int(purged)
    return Composition(counts, int(purged), int(rejected), total, share)
