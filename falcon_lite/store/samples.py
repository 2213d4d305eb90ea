"""The durable sample buffer of one run: append, rotate, disfavour, purge, composition.

Every change runs in one transaction that first locks the run's row (``UPDATE runs``
on both databases; ``BEGIN IMMEDIATE`` on SQLite), so writers to one run serialize and
each change gets the next run ``version``. A change:

1. reads the live window (``status < TOMBSTONE``, oldest first; a partial index) — or,
   when this store object made the run's previous change, takes it from memory,
2. applies the policy (`falcon_lite.core.policy.rotate`, computed by the equivalent
   `falcon_lite.store.rotation.rotate_arrays`) to the window plus the new rows, which
   enter as VALIDATION with fresh ``seq`` numbers,
3. updates the moved rows with ``WHERE status = old`` (so no status moves backwards),
   inserts the new rows with their status after the rotation (a new row promoted or
   evicted at once is the same history collapsed into one transaction), and adjusts
   ``status_counts`` so `composition` never scans ``samples``. On PostgreSQL these three
   writes are one statement; on SQLite, three executemany calls of fixed statements on
   the transaction's DBAPI cursor (precomputed tuples: no per-statement SQLAlchemy work on
   the hot path; driver errors still surface as SQLAlchemy's).

Group commit (``group_commit_s > 0``, the inline runtime's choice): a change's transaction
stays open, and later changes join it, until ``group_commit_s`` seconds have passed since
it began (checked after each change) or `commit` is called; each change runs under its own
savepoint, so one that fails is undone alone and the group goes on. What the store
returned is then durable only after the commit: a crash loses the uncommitted changes
(never a committed one). The group holds the run's write lock (on SQLite, the database's)
while it is open, so everything else this process writes to the database goes through
`settled` (commit, and no new group until done): the store's `purge`, its mirrors, and
the inline runtime's metrics and checkpoints. A store dropped while holding changes loses
them (with a ResourceWarning).

Rows whose theta or x hold NaN/inf (or whose log_q/log_prior is NaN) are not stored;
they are counted in ``runs.rejected``. Readers (`falcon_lite.store.mirror.Mirror`)
load only rows whose ``version`` is newer than theirs.
"""

from __future__ import annotations

import threading
import time
import warnings
import weakref
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import chain, repeat
from typing import Any

import numpy as np
from sqlalchemy import BigInteger, ColumnElement, Connection, Engine, any_, bindparam, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError

from falcon_lite.core.policy import TRAINABLE, Origin, Sizes, Status
from falcon_lite.store.db import check_schema, writer
from falcon_lite.store.errors import ConflictError, InvalidSampleError, NotFoundError
from falcon_lite.store.models import Reader, Run, Sample, StatusCount, utcnow
from falcon_lite.store.rotation import rotate_arrays

RUNS = Run.__table__
SAMPLES = Sample.__table__
COUNTS = StatusCount.__table__
READERS = Reader.__table__
TOMBSTONE = int(Status.TOMBSTONE)
ORIGIN_NAMES = {Origin.PRIOR: "prior", Origin.PROPOSAL: "proposal"}
DEFAULT_READER_TIMEOUT_S = 600.0
_IN_CHUNK = 5000  # seqs per UPDATE ... WHERE seq IN (...), well under SQLite's variable limit


@dataclass(frozen=True)
class AppendResult:
    """What one append changed: enough for a mirror in this process to follow without a query.

    The accepted rows got seqs ``first_seq .. first_seq + accepted - 1`` in input order
    (rejected rows skipped); ``move_seqs[i]`` moved to ``move_status[i]`` (new rows that
    left VALIDATION in the same change included).
    """

    accepted: int
    rejected: int
    first_seq: int
    version: int
    move_seqs: np.ndarray = field(repr=False)
    move_status: np.ndarray = field(repr=False)
    # the validated input, and the very arrays it came from (`Mirror.apply` reuses it for them)
    checked: Checked | None = field(default=None, repr=False, compare=False)
    inputs: tuple = field(default=(), repr=False, compare=False)

    def __getstate__(self) -> dict:
        # sent to another process (Ray), the input cannot be the very arrays there: leave it out
        return {**self.__dict__, "checked": None, "inputs": ()}

    def checked_for(self, *arrays) -> Checked | None:
        """The validated input if `arrays` are the very objects that were appended, else None."""
        same = len(arrays) == len(self.inputs) and all(a is b for a, b in zip(arrays, self.inputs))
        return self.checked if same else None

    @property
    def moves(self) -> dict[int, Status]:
        return {int(s): Status(int(t)) for s, t in zip(self.move_seqs, self.move_status)}


@dataclass(frozen=True)
class Composition:
    """The buffer's counts by status and origin, from ``status_counts`` (no table scan)."""

    counts: dict[str, dict[str, int]]
    purged: int
    rejected: int
    total: int
    prior_share_trainable: float

    def to_dict(self, prior_fraction: float | str) -> dict[str, Any]:
        """The body of ``GET /runs/{id}/buffer`` (DESIGN.md, REST contract)."""
        return {
            "counts": {s: dict(o) for s, o in self.counts.items()},
            "purged": self.purged,
            "total": self.total,
            "prior_share_trainable": self.prior_share_trainable,
            "prior_fraction": prior_fraction,
        }


@dataclass(frozen=True)
class Checked:
    """Validated append input: arrays in canonical dtypes and the mask of storable rows."""

    theta: np.ndarray
    x: np.ndarray
    origin: np.ndarray
    log_q: np.ndarray
    log_prior: np.ndarray
    ok: np.ndarray


def check_samples(theta, x, origin, log_q, log_prior, dim: int, dtype: np.dtype) -> Checked:
    """Validate append input; `InvalidSampleError` names the argument and expected vs got."""
    arrays = {}
    for name, value in (("theta", theta), ("x", x)):
        if not isinstance(value, np.ndarray):
            raise InvalidSampleError(f"{name} must be a numpy array of shape (n, {dim}), got {type(value).__name__}")
        if value.ndim != 2 or value.shape[1] != dim:
            raise InvalidSampleError(f"{name} must have shape (n, {dim}), got {value.shape}")
        if value.dtype != dtype:
            raise InvalidSampleError(f"{name} must have dtype {dtype}, got {value.dtype}")
        arrays[name] = np.ascontiguousarray(value)
    n = len(arrays["theta"])
    if len(arrays["x"]) != n:
        raise InvalidSampleError(f"x must have {n} rows like theta, got {len(arrays['x'])}")
    origin = np.asarray(origin)
    if origin.shape != (n,):
        raise InvalidSampleError(f"origin must have shape ({n},), got {origin.shape}")
    if origin.dtype == np.bool_:
        origin = np.where(origin, int(Origin.PRIOR), int(Origin.PROPOSAL)).astype(np.int8)
    elif np.issubdtype(origin.dtype, np.integer):
        if n and (origin.min() < int(Origin.PRIOR) or origin.max() > int(Origin.PROPOSAL)):
            raise InvalidSampleError(f"origin values must be Origin.PRIOR (0) or Origin.PROPOSAL (1), got {np.unique(origin)}")
        origin = origin.astype(np.int8, copy=False)
    else:
        raise InvalidSampleError(f"origin must be an integer (Origin) or bool (True = prior) array, got dtype {origin.dtype}")
    vectors = {}
    for name, value in (("log_q", log_q), ("log_prior", log_prior)):
        value = np.asarray(value)
        if value.shape != (n,):
            raise InvalidSampleError(f"{name} must have shape ({n},), got {value.shape}")
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise InvalidSampleError(f"{name} must be a float array, got dtype {value.dtype}")
        vectors[name] = value.astype(np.float64, copy=False)
    ok = (
        np.isfinite(arrays["theta"]).all(axis=1)
        & np.isfinite(arrays["x"]).all(axis=1)
        & ~np.isnan(vectors["log_q"])
        & ~np.isnan(vectors["log_prior"])
    )
    return Checked(arrays["theta"], arrays["x"], origin, vectors["log_q"], vectors["log_prior"], ok)


class SampleStore:
    """One run's sample buffer in the database (see the module doc).

    `sizes` may be replaced (``store.sizes = Sizes(...)``); call `rotate` afterwards.
    With ``group_commit_s > 0`` changes are committed in groups (see the module doc): call
    `commit` when done.
    """

    def __init__(self, engine: Engine, run_id: int, sizes: Sizes, dim: int, dtype: str = "float64",
                 *, group_commit_s: float = 0.0) -> None:
        if not isinstance(sizes, Sizes):
            raise TypeError(f"sizes must be a falcon_lite.core.policy.Sizes, got {type(sizes).__name__}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype must be a float dtype, got {dtype!r}")
        if isinstance(group_commit_s, bool) or not (
            isinstance(group_commit_s, (int, float)) and 0 <= group_commit_s < float("inf")
        ):
            raise ValueError(f"group_commit_s must be a finite number >= 0, got {group_commit_s!r}")
        check_schema(engine)
        self.engine = engine
        self.group_commit_s = float(group_commit_s)
        self.writer = writer(engine)
        self.run_id = int(run_id)
        self.sizes = sizes
        self.dim = dim
        self.postgres = engine.dialect.name == "postgresql"
        # ``runs.updated`` as Core would store it (the raw SQLite path binds it itself)
        bind = RUNS.c.updated.type.dialect_impl(engine.dialect).bind_processor(engine.dialect)
        self._now = utcnow if self.postgres or bind is None else (lambda: bind(utcnow()))
        self._mirrors: weakref.WeakSet = weakref.WeakSet()
        self._write_lock = threading.RLock()
        self._window: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._pending_window: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._held: tuple[Connection, Any, float] | None = None  # (connection, transaction, began)
        with engine.connect() as conn:
            if conn.execute(select(RUNS.c.id).where(RUNS.c.id == self.run_id)).first() is None:
                raise NotFoundError(f"run {run_id} not found")

    # -- writes -------------------------------------------------------------------------

    def append(self, theta, x, origin, step: int, log_q, log_prior) -> AppendResult:
        """Store a batch as VALIDATION and rotate, in one transaction (see the module doc)."""
        checked = check_samples(theta, x, origin, log_q, log_prior, self.dim, self.dtype)
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise InvalidSampleError(f"step must be a non-negative integer, got {step!r}")
        n_ok = int(checked.ok.sum())
        n_bad = len(checked.ok) - n_ok
        with self._change() as conn:
            next_seq, version = self._lock(conn, appended=n_ok, rejected=n_bad)
            first_seq = next_seq - n_ok
            new_seq = np.arange(first_seq, next_seq, dtype=np.int64)
            new_origin = checked.origin[checked.ok]
            move_seqs, move_status = self._rotate_and_write(conn, version, new_seq, new_origin, checked, int(step))
        return AppendResult(n_ok, n_bad, first_seq, version, move_seqs, move_status, checked,
                            (theta, x, origin, log_q, log_prior))

    def disfavour(self, seqs) -> int:
        """Mark TRAINING samples DISFAVOURED (others are ignored), then rotate; return how many moved."""
        seqs = np.unique(np.asarray(seqs, dtype=np.int64))
        with self._change() as conn:
            _, version = self._lock(conn)
            self._window = None  # statuses change below, outside the cached window's knowledge
            moved = []
            for chunk in _chunks(seqs) if not self.postgres else [seqs]:
                moved += conn.execute(
                    update(SAMPLES)
                    .where(SAMPLES.c.run_id == self.run_id, self._seq_in(chunk),
                           SAMPLES.c.status == int(Status.TRAINING))
                    .values(status=int(Status.DISFAVOURED), version=version)
                    .returning(SAMPLES.c.origin)
                ).scalars().all()
            delta = Counter()
            for o in moved:
                delta[(int(Status.TRAINING), o)] -= 1
                delta[(int(Status.DISFAVOURED), o)] += 1
            self._add_counts(conn, delta)
            self._rotate_and_write(conn, version, np.empty(0, np.int64), np.empty(0, np.int8))
        return len(moved)

    def rotate(self) -> int:
        """Apply the policy with the current sizes without appending; return how many rows moved."""
        with self._change() as conn:
            _, version = self._lock(conn)
            move_seqs, _ = self._rotate_and_write(conn, version, np.empty(0, np.int64), np.empty(0, np.int8))
        return len(move_seqs)

    def purge(self, reader_timeout_s: float = DEFAULT_READER_TIMEOUT_S) -> int:
        """Delete TOMBSTONE rows no reader can still hold; return how many were deleted.

        Mirrors made by this store object first record the version they hold (so a mirror
        kept current with `Mirror.apply` alone never blocks purging). Readers whose
        heartbeat is older than `reader_timeout_s` are then dropped (a dropped mirror
        reloads in full on its next sync). With no readers left, every TOMBSTONE row goes.
        """
        with self.settled(), self.writer.begin() as conn:
            _, version = self._lock(conn, bump=False)
            for mirror in list(self._mirrors):  # this process's mirrors: record what they hold
                if not mirror.closed:
                    conn.execute(
                        update(READERS)
                        .where(READERS.c.run_id == self.run_id, READERS.c.name == mirror.name)
                        .values(version=mirror.version, heartbeat=utcnow())
                    )
            cutoff = utcnow() - timedelta(seconds=reader_timeout_s)
            conn.execute(delete(READERS).where(READERS.c.run_id == self.run_id, READERS.c.heartbeat < cutoff))
            floor = conn.execute(
                select(func.min(READERS.c.version)).where(READERS.c.run_id == self.run_id)
            ).scalar_one_or_none()
            if floor is None or floor >= version:
                # every reader has seen every change: all TOMBSTONE rows go, and their origins
                # are already counted in status_counts (no rows come back)
                tombstones = dict(conn.execute(
                    select(COUNTS.c.origin, COUNTS.c.n).where(COUNTS.c.run_id == self.run_id,
                                                              COUNTS.c.status == TOMBSTONE)
                ).all())
                n = conn.execute(
                    delete(SAMPLES).where(SAMPLES.c.run_id == self.run_id, SAMPLES.c.status == TOMBSTONE)
                ).rowcount
                by_origin = [int(tombstones.get(o, 0)) for o in range(2)]
                if n != sum(by_origin):
                    raise ConflictError(f"run {self.run_id}: {n} TOMBSTONE rows deleted, "
                                        f"status_counts says {sum(by_origin)}")
            else:  # one pass: the deleted rows' origins come back to be counted
                where = [SAMPLES.c.run_id == self.run_id, SAMPLES.c.status == TOMBSTONE, SAMPLES.c.version <= floor]
                if self.postgres:
                    gone = conn.execute(delete(SAMPLES).where(*where).returning(SAMPLES.c.origin)).scalars().all()
                else:  # thousands of rows: skip SQLAlchemy's per-row result processing
                    with _driver_cursor(conn) as cursor:
                        gone = [o for (o,) in cursor.execute(_SQLITE_PURGE, (self.run_id, TOMBSTONE, floor))]
                n = len(gone)
                by_origin = np.bincount(np.fromiter(gone, np.int64, n), minlength=2).tolist()
            if n:
                self._add_counts(conn, Counter({(TOMBSTONE, o): -int(c) for o, c in enumerate(by_origin) if c}))
                conn.execute(update(RUNS).where(RUNS.c.id == self.run_id).values(purged=RUNS.c.purged + n))
        return n

    # -- reads --------------------------------------------------------------------------

    def composition(self) -> Composition:
        """Counts by (status, origin), purged, rejected and the pool's prior share."""
        self.commit()
        conn = self.engine.connect()
        if self.postgres:  # one snapshot for both reads
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn, conn.begin():
            run = conn.execute(
                select(RUNS.c.purged, RUNS.c.rejected).where(RUNS.c.id == self.run_id)
            ).one_or_none()
            if run is None:
                raise NotFoundError(f"run {self.run_id} not found")
            rows = conn.execute(
                select(COUNTS.c.status, COUNTS.c.origin, COUNTS.c.n).where(COUNTS.c.run_id == self.run_id)
            ).all()
        counts = {s.name: {name: 0 for name in ORIGIN_NAMES.values()} for s in Status}
        for s, o, n in rows:
            counts[Status(s).name][ORIGIN_NAMES[Origin(o)]] += int(n)
        pool = [counts[s.name] for s in TRAINABLE]
        n_pool = sum(c["prior"] + c["proposal"] for c in pool)
        share = sum(c["prior"] for c in pool) / n_pool if n_pool else 0.0
        total = sum(c["prior"] + c["proposal"] for c in counts.values()) + int(run.purged)
        return Composition(counts, int(run.purged), int(run.rejected), total, share)

    def mirror(self, name: str, heartbeat_s: float = 1.0):
        """Register an in-memory reader of this run's live samples (see `Mirror`)."""
        from falcon_lite.store.mirror import Mirror

        return Mirror(self, name, heartbeat_s=heartbeat_s)

    # -- internals ----------------------------------------------------------------------

    def _lock(self, conn: Connection, bump: bool = True, appended: int = 0, rejected: int = 0) -> tuple[int, int]:
        """Lock the run row (an UPDATE), bump its version, count `appended` new seqs and
        `rejected` rows; return (next_seq, version) after. One fixed statement on each database."""
        params = (appended, appended, rejected, int(bump), self._now(), self.run_id)
        if self.postgres:
            row = conn.execute(_PG_LOCK, dict(zip(_LOCK_NAMES, params))).one_or_none()
        else:
            with _driver_cursor(conn) as cursor:
                row = cursor.execute(_SQLITE_LOCK, params).fetchone()
        if row is None:
            raise NotFoundError(f"run {self.run_id} not found")
        return int(row[0]), int(row[1])

    def _rotate_and_write(
        self, conn: Connection, version: int, new_seq: np.ndarray, new_origin: np.ndarray,
        checked: Checked | None = None, step: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rotate the live window plus the new rows; write the moves, the new rows and the counts.

        Returns (moved seqs, their new statuses), new rows that left VALIDATION included.
        """
        old_seq, old_status, old_origin = self._live_window(conn, version)
        n_old = len(old_seq)
        seq = np.concatenate([old_seq, new_seq])
        status = np.concatenate([old_status, np.zeros(len(new_seq), np.int8)])
        origin = np.concatenate([old_origin, new_origin.astype(np.int8)])
        idx, new = rotate_arrays(status, origin, self.sizes)
        final = status.copy()
        final[idx] = new
        live = final < TOMBSTONE
        self._pending_window = (version, seq[live], final[live], origin[live])
        # counts: all rows after (new rows included) minus the old rows before
        origin64 = origin.astype(np.int64)
        after = np.bincount(2 * final.astype(np.int64) + origin64, minlength=8)
        before = np.bincount(2 * status[:n_old].astype(np.int64) + origin64[:n_old], minlength=8)
        delta = Counter({(k // 2, k % 2): int(d) for k, d in enumerate(after - before) if d})
        old_moved = idx < n_old
        moves = (seq[idx[old_moved]], status[idx[old_moved]], new[old_moved])
        new_rows = None
        if checked is not None and len(new_seq):
            new_rows = (checked, new_seq, final[n_old:], step)
        if self.postgres:
            self._write_pg(conn, version, moves, new_rows, delta)
        else:
            self._update_moves(conn, version, *moves)
            if new_rows is not None:
                self._insert(conn, *new_rows, version)
            self._add_counts(conn, delta)
        return seq[idx], new

    def _live_window(self, conn: Connection, version: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(seq, status, origin) of the live rows, oldest first, as of ``version - 1``.

        When this store made the previous change itself (the run's version before our bump
        is the one it left), its cached window is exact and no query is needed; otherwise
        (another writer, or the first change) it is read through the partial index.
        """
        cached = self._window
        if cached is not None and cached[0] == version - 1:
            return cached[1], cached[2], cached[3]
        rows = conn.execute(
            select(SAMPLES.c.seq, SAMPLES.c.status, SAMPLES.c.origin)
            .where(SAMPLES.c.run_id == self.run_id, SAMPLES.c.status < TOMBSTONE)
            .order_by(SAMPLES.c.seq)
        ).all()
        old = np.fromiter(chain.from_iterable(rows), np.int64, 3 * len(rows)).reshape(-1, 3)
        return old[:, 0].copy(), old[:, 1].astype(np.int8), old[:, 2].astype(np.int8)

    @contextmanager
    def _change(self) -> Iterator[Connection]:
        """A write transaction, or a savepoint in the held group; the live window it computes
        is cached only once the change succeeded."""
        with self._write_lock:
            self._pending_window = None
            if self.group_commit_s <= 0:
                try:
                    with self.writer.begin() as conn:
                        yield conn
                except BaseException:
                    self._window = None
                    raise
                self._window = self._pending_window
                return
            conn = self._hold()
            try:
                _driver_sql(conn, "SAVEPOINT change")
            except BaseException:
                self._drop_group()
                raise
            try:
                yield conn
            except BaseException:
                self._window = None
                try:
                    _driver_sql(conn, "ROLLBACK TO SAVEPOINT change")
                    _driver_sql(conn, "RELEASE SAVEPOINT change")
                except BaseException:
                    self._drop_group()
                raise
            try:
                _driver_sql(conn, "RELEASE SAVEPOINT change")
            except BaseException:  # the change's fate is unknown: raised must mean not stored
                self._drop_group()
                raise
            self._window = self._pending_window
            if time.monotonic() - self._held[2] >= self.group_commit_s:
                self.commit()

    @contextmanager
    def settled(self) -> Iterator[None]:
        """Commit the held group and keep this store's changes out until the block ends.

        For a write to the same database through another connection in this process (the
        store's purge, its mirrors, a run's metrics and checkpoints): with a group held it
        would wait for this very process's lock, and a change from another thread between
        the commit and that write would open a new group and hold the lock again.
        """
        with self._write_lock:
            self.commit()
            yield

    def _hold(self) -> Connection:
        """The group's connection, in its open transaction (begun now if none is held)."""
        if self._held is None:
            conn = self.writer.connect()
            try:
                transaction = conn.begin()
            except BaseException:
                conn.close()
                raise
            self._held = (conn, transaction, time.monotonic())
        return self._held[0]

    def commit(self) -> None:
        """Commit the held group of changes, if any (see the module doc). If the commit
        fails, the group's changes are lost: the error is raised and this store's mirrors
        reload in full on their next sync."""
        with self._write_lock:
            if self._held is None:
                return
            conn, transaction, _ = self._held
            self._held = None
            try:
                transaction.commit()
            except BaseException:
                self._lost()
                raise
            finally:
                conn.close()

    def _drop_group(self) -> None:
        """Roll the held group back (a savepoint failed: the caller raises that error)."""
        if self._held is None:
            return
        conn, transaction, _ = self._held
        self._held = None
        self._lost()
        with suppress(Exception):  # a broken connection has nothing left to roll back
            transaction.rollback()
        with suppress(Exception):
            conn.close()

    def __del__(self) -> None:
        if getattr(self, "_held", None) is not None:
            warnings.warn(f"SampleStore of run {self.run_id} dropped with uncommitted changes: they are lost "
                          "(call commit())", ResourceWarning, stacklevel=1)

    def _lost(self) -> None:
        self._window = None
        for mirror in list(self._mirrors):
            mirror.stale = True

    def _write_pg(self, conn: Connection, version: int, moves, new_rows, delta: Counter) -> None:
        """Moves, new rows and counts in ONE statement (data-modifying CTEs over unnest arrays).

        The parts touch disjoint rows, so running them in one snapshot is safe: one round
        trip instead of three, and no per-row parameters.
        """
        seqs, olds, news = moves
        params: dict[str, Any] = {
            "run_id": self.run_id, "version": version,
            "m_seq": seqs.tolist(), "m_old": olds.tolist(), "m_new": news.tolist(),
            "c_status": [s for s, _ in delta], "c_origin": [o for _, o in delta], "c_n": list(delta.values()),
        }
        statement = _PG_WRITE
        if new_rows is not None:
            c, new_seq, new_status, step = new_rows
            ok = c.ok
            params.update({
                "step": step, "width": self.dim * self.dtype.itemsize,
                "seq": new_seq.tolist(), "status": new_status.tolist(), "origin": c.origin[ok].tolist(),
                "theta": c.theta[ok].tobytes(), "x": c.x[ok].tobytes(),
                "log_q": c.log_q[ok].tolist(), "log_prior": c.log_prior[ok].tolist(),
            })
            statement = _PG_WRITE_INSERT
        moved, counted = conn.execute(statement, params).one()
        self._check_changed(moved, len(seqs))
        if counted != len(delta):
            raise ConflictError(f"run {self.run_id}: status counts missing ({counted} of {len(delta)} rows)")

    def _seq_in(self, seqs) -> ColumnElement[bool]:
        """``seq IN (...)``; on PostgreSQL ``seq = ANY(:array)``, one cached statement for any length."""
        values = [int(v) for v in seqs]
        if self.postgres:
            return SAMPLES.c.seq == any_(bindparam("seqs", values, type_=ARRAY(BigInteger)))
        return SAMPLES.c.seq.in_(values)

    def _update_moves(self, conn: Connection, version: int, seqs, olds, news) -> None:
        """SQLite: one driver-level executemany of ``UPDATE ... WHERE seq BETWEEN a AND b AND
        status = old``, a statement per run of consecutive seqs with the same move (a fresh
        buffer retires its whole previous batch in one)."""
        if not len(seqs):
            return
        with _driver_cursor(conn) as cursor:
            cursor.executemany(_SQLITE_MOVE, _move_ranges(self.run_id, version, seqs, olds, news))
            self._check_changed(cursor.rowcount, len(seqs))

    def _check_changed(self, changed: int, expected: int) -> None:
        if changed != expected:
            raise ConflictError(f"run {self.run_id}: {expected - changed} samples changed status concurrently")

    def _add_counts(self, conn: Connection, delta: Counter) -> None:
        """Add `delta` {(status, origin): d} to ``status_counts`` (one executemany)."""
        params = [(d, self.run_id, s, o) for (s, o), d in sorted(delta.items()) if d]
        if not params:
            return
        if self.postgres:  # (off the hot path: PostgreSQL appends count inside `_write_pg`)
            names = ("b_n", "b_run", "b_status", "b_origin")
            conn.execute(_PG_COUNTS, [dict(zip(names, p)) for p in params])
            return
        with _driver_cursor(conn) as cursor:
            cursor.executemany(_SQLITE_COUNTS, params)
            changed = cursor.rowcount  # sqlite3 sums executemany's rows
        if changed != len(params):
            raise ConflictError(f"run {self.run_id}: status counts missing ({changed} of {len(params)} rows)")

    def _insert(self, conn: Connection, c: Checked, seq: np.ndarray, status: np.ndarray, step: int,
                version: int) -> None:
        """SQLite: one driver-level executemany of the new rows (blobs cut without a Python loop)."""
        ok = c.ok
        n = len(seq)
        theta, x = (np.ascontiguousarray(a[ok]) for a in (c.theta, c.x))
        blob = np.dtype(f"V{self.dim * self.dtype.itemsize}")
        rows = zip(
            repeat(self.run_id, n), seq.tolist(), status.tolist(), c.origin[ok].tolist(), repeat(step, n),
            theta.view(blob).reshape(n).tolist(), x.view(blob).reshape(n).tolist(),
            c.log_q[ok].tolist(), c.log_prior[ok].tolist(), repeat(version, n),
        )
        with _driver_cursor(conn) as cursor:
            cursor.executemany(_SQLITE_INSERT, rows)


def _move_ranges(run_id: int, version: int, seqs: np.ndarray, olds: np.ndarray, news: np.ndarray):
    """Parameters of _SQLITE_MOVE, one tuple per maximal run of seqs that are consecutive
    integers with the same (old, new) status; sorted by seq. Every seq of a run is in `seqs`
    with status `old`, so the statement changes exactly those rows (rowcount checks it).

    >>> list(_move_ranges(1, 7, np.array([5, 3, 4, 9]), np.array([1, 1, 1, 1]), np.array([3, 3, 3, 3])))
    [(3, 7, 1, 3, 5, 1), (3, 7, 1, 9, 9, 1)]
    """
    order = np.argsort(seqs, kind="stable")
    seqs, olds, news = seqs[order], olds[order], news[order]
    breaks = np.flatnonzero((np.diff(seqs) != 1) | (np.diff(olds) != 0) | (np.diff(news) != 0)) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(seqs)])) - 1
    for a, b in zip(starts.tolist(), ends.tolist()):
        yield int(news[a]), version, run_id, int(seqs[a]), int(seqs[b]), int(olds[a])


@contextmanager
def _driver_cursor(conn: Connection) -> Iterator[Any]:
    """A DBAPI cursor inside `conn`'s transaction, for the hot path (no per-statement SQLAlchemy
    work); driver errors come out as SQLAlchemy's `DBAPIError` subclasses, as from `execute`."""
    cursor = conn.connection.cursor()
    try:
        yield cursor
    except conn.dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(None, None, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect) from exc
    finally:
        cursor.close()


def _driver_sql(conn: Connection, statement: str) -> None:
    """One parameterless statement in `conn`'s transaction, on the driver's cursor."""
    with _driver_cursor(conn) as cursor:
        cursor.execute(statement)


_LOCK_NAMES = ("next", "appended", "rejected", "bump", "updated", "run_id")
_LOCK_SET = (
    "UPDATE runs SET next_seq = next_seq + {0}, appended = appended + {1}, rejected = rejected + {2}, "
    "version = version + {3}, updated = {4} WHERE id = {5} RETURNING next_seq, version"
)
_SQLITE_LOCK = _LOCK_SET.format(*"??????")
_PG_LOCK = text(_LOCK_SET.format(*(f":{n}" for n in _LOCK_NAMES))).bindparams(
    bindparam("updated", type_=RUNS.c.updated.type)
)
_SQLITE_PURGE = "DELETE FROM samples WHERE run_id = ? AND status = ? AND version <= ? RETURNING origin"
_SQLITE_MOVE = "UPDATE samples SET status = ?, version = ? WHERE run_id = ? AND seq BETWEEN ? AND ? AND status = ?"
_SQLITE_COUNTS = "UPDATE status_counts SET n = n + ? WHERE run_id = ? AND status = ? AND origin = ?"
_PG_COUNTS = text(
    "UPDATE status_counts SET n = n + :b_n WHERE run_id = :b_run AND status = :b_status AND origin = :b_origin"
)
_SQLITE_INSERT = (
    "INSERT INTO samples (run_id, seq, status, origin, step, theta, x, log_q, log_prior, version) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# One statement per change on PostgreSQL. theta and x travel as one blob each (rows back to
# back) and are cut per row on the server: a bytea[] parameter is escaped element by element
# on the client, ~10x slower.
_PG_MOVES = (
    "moved AS (UPDATE samples AS s SET status = m.new, version = :version "
    "FROM unnest(CAST(:m_seq AS BIGINT[]), CAST(:m_old AS SMALLINT[]), CAST(:m_new AS SMALLINT[])) "
    "AS m(seq, old, new) "
    "WHERE s.run_id = :run_id AND s.seq = m.seq AND s.status = m.old RETURNING 1), "
    "counted AS (UPDATE status_counts AS c SET n = c.n + d.n "
    "FROM unnest(CAST(:c_status AS SMALLINT[]), CAST(:c_origin AS SMALLINT[]), CAST(:c_n AS BIGINT[])) "
    "AS d(status, origin, n) "
    "WHERE c.run_id = :run_id AND c.status = d.status AND c.origin = d.origin RETURNING 1)"
)
_PG_INSERT = (
    "inserted AS (INSERT INTO samples (run_id, seq, status, origin, step, theta, x, log_q, log_prior, version) "
    "SELECT :run_id, u.seq, u.status, u.origin, :step, "
    "substring(CAST(:theta AS BYTEA) FROM CAST((u.i - 1) * :width + 1 AS INTEGER) FOR :width), "
    "substring(CAST(:x AS BYTEA) FROM CAST((u.i - 1) * :width + 1 AS INTEGER) FOR :width), "
    "u.log_q, u.log_prior, :version "
    "FROM unnest(CAST(:seq AS BIGINT[]), CAST(:status AS SMALLINT[]), CAST(:origin AS SMALLINT[]), "
    "CAST(:log_q AS FLOAT8[]), CAST(:log_prior AS FLOAT8[])) WITH ORDINALITY "
    "AS u(seq, status, origin, log_q, log_prior, i) RETURNING 1)"
)
_PG_SELECT = " SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM counted)"
_PG_WRITE = text("WITH " + _PG_MOVES + _PG_SELECT)
_PG_WRITE_INSERT = text("WITH " + _PG_MOVES + ", " + _PG_INSERT + _PG_SELECT)


def _chunks(values) -> list:
    values = list(values) if not isinstance(values, np.ndarray) else values
    return [values[i:i + _IN_CHUNK] for i in range(0, len(values), _IN_CHUNK)] if len(values) else []
