"""The sample buffer's SQL on SQLite: fixed statements on the transaction's DBAPI cursor.

Precomputed tuples and driver-level ``executemany`` keep the hot path free of per-statement
SQLAlchemy work (driver errors still surface as SQLAlchemy's, through `driver_cursor`).
SQLite has one writer at a time: the inline runtime groups its commits, and on Ray the
trainer writes its own samples (no writer actor beside it).
"""

from __future__ import annotations

from collections import Counter
from itertools import repeat

import numpy as np
from sqlalchemy import Connection, Engine

from falcon_lite.core.samples import Samples
from falcon_lite.store.db import driver_cursor
from falcon_lite.store.errors import ConflictError
from falcon_lite.store.models import Run

_IN_CHUNK = 5000  # seqs per UPDATE ... WHERE seq IN (...), well under SQLite's variable limit
_LOCK = (
    "UPDATE runs SET next_seq = next_seq + ?, appended = appended + ?, rejected = rejected + ?, "
    "version = version + ?, updated = ? WHERE id = ? RETURNING next_seq, version"
)
_MOVE = "UPDATE samples SET status = ?, version = ? WHERE run_id = ? AND seq BETWEEN ? AND ? AND status = ?"
_COUNTS = "UPDATE status_counts SET n = n + ? WHERE run_id = ? AND status = ? AND origin = ?"
_INSERT = (
    "INSERT INTO samples (run_id, seq, status, origin, step, theta, x, log_q, log_prior, version) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_PURGE = "DELETE FROM samples WHERE run_id = ? AND status = ? AND version <= ? RETURNING origin"
_DISFAVOUR = (
    "UPDATE samples SET status = ?, version = ? WHERE run_id = ? AND status = ? AND seq IN ({}) RETURNING seq, origin"
)


class SQLite:
    """Statements and capabilities of the embedded default (see the module doc)."""

    name = "sqlite"
    group_commit_s = 0.1  # the inline runtime's groups (engine/inline.py says what a crash loses)
    own_writer = False  # Ray: the trainer stores its batches itself (one writer at a time)
    inline_reads = True  # the API reads on its event loop: a local file answers in microseconds

    def __init__(self, engine: Engine) -> None:
        # ``runs.updated`` as Core would bind it (the raw statements bind it themselves)
        bind = Run.__table__.c.updated.type.dialect_impl(engine.dialect).bind_processor(engine.dialect)
        self._bind_time = bind or (lambda value: value)

    def snapshot(self, engine: Engine) -> Connection:
        """A connection whose transaction's reads see one snapshot (SQLite: any transaction)."""
        return engine.connect()

    def lock(self, conn: Connection, run_id: int, appended: int, rejected: int, bump: int, now) -> tuple | None:
        with driver_cursor(conn) as cursor:
            return cursor.execute(_LOCK, (appended, appended, rejected, bump, self._bind_time(now), run_id)).fetchone()

    def write(self, conn: Connection, run_id: int, version: int, moves, new_rows, delta: Counter) -> None:
        """The moves (`moves`: seqs, old, new statuses), the new rows and the count changes."""
        self._update_moves(conn, run_id, version, *moves)
        if new_rows is not None:
            self._insert(conn, run_id, version, *new_rows)
        self.add_counts(conn, run_id, delta)

    def add_counts(self, conn: Connection, run_id: int, delta: Counter) -> None:
        """Add `delta` {(status, origin): d} to ``status_counts`` (one executemany)."""
        params = [(d, run_id, s, o) for (s, o), d in sorted(delta.items()) if d]
        if not params:
            return
        with driver_cursor(conn) as cursor:
            cursor.executemany(_COUNTS, params)
            changed = cursor.rowcount  # sqlite3 sums executemany's rows
        if changed != len(params):
            raise ConflictError(f"run {run_id}: status counts missing ({changed} of {len(params)} rows)")

    def move_where(self, conn: Connection, run_id: int, seqs: np.ndarray, old: int, new: int,
                   version: int) -> list[tuple[int, int]]:
        """Move the rows of `seqs` whose status is `old` to `new`; (seq, origin) of those moved."""
        moved = []
        with driver_cursor(conn) as cursor:
            for start in range(0, len(seqs), _IN_CHUNK):
                chunk = seqs[start:start + _IN_CHUNK].tolist()
                statement = _DISFAVOUR.format(", ".join("?" * len(chunk)))
                moved += cursor.execute(statement, (new, version, run_id, old, *chunk)).fetchall()
        return moved

    def purge(self, conn: Connection, run_id: int, tombstone: int, floor: int) -> list[int]:
        """Delete TOMBSTONE rows at versions up to `floor`; their origins (thousands of rows:
        no per-row result processing)."""
        with driver_cursor(conn) as cursor:
            return [o for (o,) in cursor.execute(_PURGE, (run_id, tombstone, floor))]

    def _update_moves(self, conn: Connection, run_id: int, version: int, seqs, olds, news) -> None:
        """One executemany of ``UPDATE ... WHERE seq BETWEEN a AND b AND status = old``, a statement
        per run of consecutive seqs with the same move (a fresh buffer retires its whole previous
        batch in one)."""
        if not len(seqs):
            return
        with driver_cursor(conn) as cursor:
            cursor.executemany(_MOVE, move_ranges(run_id, version, seqs, olds, news))
            changed = cursor.rowcount
        if changed != len(seqs):
            raise ConflictError(f"run {run_id}: {len(seqs) - changed} samples changed status concurrently")

    def _insert(self, conn: Connection, run_id: int, version: int, rows: Samples, seq: np.ndarray,
                status: np.ndarray) -> None:
        """One executemany of the new rows (blobs cut without a Python loop)."""
        n = len(seq)
        rows_of = (repeat(run_id, n), seq.tolist(), status.tolist(), rows.origin.tolist(), repeat(rows.step, n),
                   _blobs(rows.theta), _blobs(rows.x), rows.log_q.tolist(), rows.log_prior.tolist(), repeat(version, n))
        with driver_cursor(conn) as cursor:
            cursor.executemany(_INSERT, zip(*rows_of))


def _blobs(a: np.ndarray) -> list[bytes]:
    """Each row of `a` as one bytes object (its dtype's bytes, C order)."""
    n = len(a)
    a = np.ascontiguousarray(a).reshape(n, -1)
    return a.view(np.dtype(f"V{a.shape[1] * a.itemsize}")).reshape(n).tolist()


def move_ranges(run_id: int, version: int, seqs: np.ndarray, olds: np.ndarray, news: np.ndarray):
    """Parameters of the move statement, one tuple per maximal run of seqs that are consecutive
    integers with the same (old, new) status; sorted by seq. Every seq of a run is in `seqs`
    with status `old`, so the statement changes exactly those rows (rowcount checks it).

    >>> list(move_ranges(1, 7, np.array([5, 3, 4, 9]), np.array([1, 1, 1, 1]), np.array([3, 3, 3, 3])))
    [(3, 7, 1, 3, 5, 1), (3, 7, 1, 9, 9, 1)]
    """
    order = np.argsort(seqs, kind="stable")
    seqs, olds, news = seqs[order], olds[order], news[order]
    breaks = np.flatnonzero((np.diff(seqs) != 1) | (np.diff(olds) != 0) | (np.diff(news) != 0)) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(seqs)])) - 1
    for a, b in zip(starts.tolist(), ends.tolist()):
        yield int(news[a]), version, run_id, int(seqs[a]), int(seqs[b]), int(olds[a])
