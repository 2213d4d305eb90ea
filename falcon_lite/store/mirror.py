"""An in-memory copy of one run's live samples, for the trainer: no SQL per batch.

A `Mirror` holds the VALIDATION, TRAINING and DISFAVOURED rows as contiguous numpy
arrays ordered by seq. `sync` loads only rows whose ``version`` is newer than the
mirror's (new rows and rows that changed status; rows that became TOMBSTONE are
dropped), so its cost follows the change, not the table. `apply` follows a change made
in this process from its `Delta` without any query. The mirror is a registered reader
(`falcon_lite.store.readers`): a purge keeps every TOMBSTONE row it has not seen. Its
recorded version (never ahead of what it holds) is written at registration, by
`heartbeat`, and by `sync` and `apply` at most every ``heartbeat_s`` seconds, so most
syncs are read-only transactions (one snapshot, no commit flush). A mirror reads and
writes through its store's narrow `ReaderSource` face, inside the store's `settled` (its
held group committed first); if a group's commit failed, the mirror is `stale` and its
next sync reloads in full.

`draw` makes a training batch from the trainable pool (TRAINING + DISFAVOURED): the
whole pool, shuffled, when it holds at most `batch_size` rows; otherwise
``batch_prior_count(f, B, prior in pool)`` prior-origin rows without replacement, and
the rest uniformly without replacement from the remaining pool rows.
"""

from __future__ import annotations

import math
import time

import numpy as np
from sqlalchemy import Connection, select

from falcon_lite.core.policy import Origin, Status, batch_prior_count
from falcon_lite.core.samples import Delta, Samples
from falcon_lite.store import readers
from falcon_lite.store.errors import NotFoundError
from falcon_lite.store.models import Run, Sample
from falcon_lite.store.readers import ReaderSource

DEFAULT_HEARTBEAT_S = 1.0
_VALIDATION = int(Status.VALIDATION)
_TRAINING = int(Status.TRAINING)
_PRIOR = int(Origin.PRIOR)
TOMBSTONE = int(Status.TOMBSTONE)
RUNS = Run.__table__
SAMPLES = Sample.__table__


class Mirror:
    """A registered in-memory reader of a run's live samples (see the module doc)."""

    def __init__(self, source: ReaderSource, name: str, heartbeat_s: float = DEFAULT_HEARTBEAT_S) -> None:
        if not name:
            raise ValueError("a mirror needs a non-empty reader name")
        self.source = source
        self.run_id = source.run_id
        self.name = str(name)
        self.version = -1
        self.closed = False
        self.stale = False  # holds changes that were lost (a failed group commit): reload in full
        self.heartbeat_s = heartbeat_s
        self._written = -math.inf
        with source.settled(), source.begin_write() as conn:
            version = self._lock_run(conn)
            self._load_all(conn, version)
            self._register(conn)
        source.readers.join(self)  # the store's purge records this mirror's version first

    # -- keeping up -----------------------------------------------------------------------

    def sync(self) -> int:
        """Load the changes since this mirror's version; return how many rows changed.

        Reads run in one snapshot and write nothing, except every `heartbeat_s` seconds
        (the reader's recorded version and liveness) and when the reader was dropped.
        """
        self._check_open()
        with self.source.settled():
            due = time.monotonic() - self._written >= self.heartbeat_s
            n = self._sync(write=due)
            if n is None:  # dropped by purge (stale heartbeat): reload in full under the write lock
                n = self._sync(write=True)
        return n

    def _sync(self, write: bool) -> int | None:
        context = self.source.begin_write() if write else self.source.snapshot()
        with context as conn:
            if not write:
                conn.begin()
            run = select(RUNS.c.version, readers.known_version(self.run_id, self.name)).where(RUNS.c.id == self.run_id)
            row = conn.execute(run.with_for_update(read=True, of=RUNS) if write else run).first()
            if row is None:
                raise NotFoundError(f"run {self.run_id} not found")
            version, known = int(row[0]), row[1]
            if known is None:
                if not write:
                    return None
                n = self._load_all(conn, version)
                self._register(conn)
                return n
            n = 0
            if self.stale:
                n = self._load_all(conn, version)
            elif version > self.version:
                # no ORDER BY: SQLite would walk the primary key (the whole run) to avoid a sort
                found = conn.execute(
                    select(*_COLUMNS).where(SAMPLES.c.run_id == self.run_id, SAMPLES.c.version > self.version)
                ).all()
                delta = self._decode(found)
                order = np.argsort(delta[0], kind="stable")
                self._merge(*(a[order] for a in delta))
                n = len(found)
                self.version = version
            if write:
                self._write_version(conn)
            else:
                conn.commit()
        return n

    def apply(self, delta: Delta) -> None:
        """Follow a change made in this process from its delta, without a query.

        Falls back to `sync` unless the delta is the change right after this mirror's
        version (or changed nothing a mirror holds: a purge).
        """
        self._check_open()
        if delta.version == self.version and delta.rows is None and not len(delta.moved):
            return  # a purge: only TOMBSTONE rows went, which a mirror never holds
        if self.stale or delta.version != self.version + 1:
            self.sync()
            return
        moved, to = delta.moved, delta.moved_to.astype(np.int8, copy=False)
        rows = delta.rows
        if rows is not None and len(rows):
            first = int(rows.seq[0])
            fresh = moved >= first  # new rows that left VALIDATION in the same change
            status = np.full(len(rows), _VALIDATION, np.int8)
            status[moved[fresh] - first] = to[fresh]
            moved, to = moved[~fresh], to[~fresh]
        pos = np.searchsorted(self.seq, moved)
        if len(moved) and (pos.max() >= len(self.seq) or (self.seq[pos] != moved).any()):
            self.sync()  # cannot happen while this mirror holds version - 1; stay correct anyway
            return
        self.status[pos] = to
        if rows is not None and len(rows):
            live = status < TOMBSTONE
            if not live.all():
                rows, status = rows.take(live), status[live]
            if len(rows):
                self.seq = np.concatenate([self.seq, rows.seq])
                self.status = np.concatenate([self.status, status])
                self.origin = np.concatenate([self.origin, rows.origin])
                self.theta = np.concatenate([self.theta, rows.theta])
                self.x = np.concatenate([self.x, rows.x])
                self.log_q = np.concatenate([self.log_q, rows.log_q])
                self.log_prior = np.concatenate([self.log_prior, rows.log_prior])
        if (to >= TOMBSTONE).any():
            self._take(np.flatnonzero(self.status < TOMBSTONE))
        self._reindex()
        self.version = delta.version
        if time.monotonic() - self._written >= self.heartbeat_s:
            self.heartbeat()  # kept by apply alone, it stays a live reader for a purge in any process

    def heartbeat(self) -> None:
        """Record this mirror's version and liveness (so purge may free what it has seen)."""
        self._check_open()
        with self.source.settled(), self.source.begin_write() as conn:
            self._write_version(conn)

    def close(self) -> None:
        """Unregister the reader; the mirror cannot be used afterwards."""
        if self.closed:
            return
        with self.source.settled(), self.source.begin_write() as conn:
            readers.unregister(conn, self.run_id, self.name)
        self.closed = True

    def __enter__(self) -> Mirror:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------------

    @property
    def trainable_size(self) -> int:
        return len(self._pool)

    @property
    def trainable_prior_size(self) -> int:
        """Prior-origin rows in the trainable pool."""
        return len(self._pool_prior)

    @property
    def validation_size(self) -> int:
        """VALIDATION rows (the mirror holds only live rows: the rest is the trainable pool)."""
        return len(self.seq) - len(self._pool)

    @property
    def size(self) -> int:
        return len(self.seq)

    def validation(self) -> Samples:
        """The VALIDATION rows, oldest first."""
        return self._rows(np.flatnonzero(self.status == _VALIDATION))

    def trainable(self) -> Samples:
        """The whole trainable pool, oldest first."""
        return self._rows(self._pool)

    def draw(self, batch_size: int, rng: np.random.Generator, prior_fraction: float) -> Samples:
        """A training batch honouring the quota (see the module doc)."""
        pool = self._pool
        n = len(pool)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0.0 <= prior_fraction <= 1.0:
            raise ValueError(f"prior_fraction must be a number in [0, 1], got {prior_fraction!r}")
        if n <= batch_size:
            return self._rows(pool[rng.permutation(n)])
        prior_pos = self._pool_prior
        k = batch_prior_count(prior_fraction, batch_size, len(prior_pos))
        if k == 0:
            return self._rows(pool[rng.choice(n, batch_size, replace=False)])
        chosen = prior_pos[rng.choice(len(prior_pos), k, replace=False)]
        rest = np.ones(n, bool)
        rest[chosen] = False
        rest_pos = np.flatnonzero(rest)
        others = rest_pos[rng.choice(len(rest_pos), batch_size - k, replace=False)]
        return self._rows(pool[np.concatenate([chosen, others])])

    # -- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"mirror {self.name!r} is closed")

    def _lock_run(self, conn: Connection) -> int:
        """The run's version, its row share-locked first (writers wait)."""
        row = conn.execute(select(RUNS.c.version).where(RUNS.c.id == self.run_id).with_for_update(read=True)).first()
        if row is None:
            raise NotFoundError(f"run {self.run_id} not found")
        return int(row[0])

    def _register(self, conn: Connection) -> None:
        readers.register(conn, self.run_id, self.name, self.version)
        self._written = time.monotonic()

    def _write_version(self, conn: Connection) -> None:
        readers.record(conn, self.run_id, self.name, self.version)
        self._written = time.monotonic()

    def _load_all(self, conn: Connection, version: int) -> int:
        found = conn.execute(
            select(*_COLUMNS).where(SAMPLES.c.run_id == self.run_id, SAMPLES.c.status < TOMBSTONE)
            .order_by(SAMPLES.c.seq)
        ).all()
        (self.seq, self.status, self.origin, self.theta, self.x, self.log_q,
         self.log_prior) = self._decode(found)
        self.version = version
        self.stale = False
        self._reindex()
        return len(found)

    def _decode(self, found) -> tuple[np.ndarray, ...]:
        dim, x_shape, dtype = self.source.theta_dim, self.source.x_shape, self.source.dtype
        n = len(found)
        if n == 0:
            return (np.empty(0, np.int64), np.empty(0, np.int8), np.empty(0, np.int8), np.empty((0, dim), dtype),
                    np.empty((0, *x_shape), dtype), np.empty(0), np.empty(0))
        seq, status, origin, theta, x, log_q, log_prior = zip(*found)
        return (
            np.array(seq, np.int64), np.array(status, np.int8), np.array(origin, np.int8),
            np.frombuffer(b"".join(theta), dtype).reshape(n, dim).copy(),
            np.frombuffer(b"".join(x), dtype).reshape(n, *x_shape).copy(),
            np.array(log_q, np.float64), np.array(log_prior, np.float64),
        )

    def _merge(self, seq, status, origin=None, theta=None, x=None, log_q=None, log_prior=None) -> None:
        """Apply rows (seq, status[, data]): update known seqs, add unknown live ones, drop tombstones."""
        if len(seq) == 0:
            return
        pos = np.searchsorted(self.seq, seq)
        known = np.zeros(len(seq), bool)
        if len(self.seq):
            inside = pos < len(self.seq)
            known[inside] = self.seq[pos[inside]] == seq[inside]
        self.status[pos[known]] = status[known]
        if theta is not None:
            new = ~known & (status < TOMBSTONE)
            if new.any():
                self.seq = np.concatenate([self.seq, seq[new]])
                self.status = np.concatenate([self.status, status[new]])
                self.origin = np.concatenate([self.origin, origin[new]])
                self.theta = np.concatenate([self.theta, theta[new]])
                self.x = np.concatenate([self.x, x[new]])
                self.log_q = np.concatenate([self.log_q, log_q[new]])
                self.log_prior = np.concatenate([self.log_prior, log_prior[new]])
                if len(self.seq) > 1 and not (np.diff(self.seq) > 0).all():
                    order = np.argsort(self.seq, kind="stable")
                    self._take(order)
        keep = self.status < TOMBSTONE
        if not keep.all():
            self._take(np.flatnonzero(keep))
        self._reindex()

    def _take(self, index: np.ndarray) -> None:
        for name in ("seq", "status", "origin", "theta", "x", "log_q", "log_prior"):
            setattr(self, name, np.ascontiguousarray(getattr(self, name)[index]))

    def _reindex(self) -> None:
        trainable = self.status >= _TRAINING
        self._pool = np.flatnonzero(trainable)
        self._pool_prior = np.flatnonzero(self.origin[self._pool] == _PRIOR)

    def _rows(self, index: np.ndarray) -> Samples:
        return Samples.unchecked(self.theta[index], self.x[index], self.origin[index], self.log_q[index],
                           self.log_prior[index], None, self.seq[index])


_COLUMNS = (SAMPLES.c.seq, SAMPLES.c.status, SAMPLES.c.origin, SAMPLES.c.theta, SAMPLES.c.x,
            SAMPLES.c.log_q, SAMPLES.c.log_prior)
