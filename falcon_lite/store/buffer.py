"""The durable sample buffer of one run: append, rotate, disfavour, purge, composition.

Every change runs in one transaction that first locks the run's row (``UPDATE runs`` on
both databases; ``BEGIN IMMEDIATE`` on SQLite), so writers to one run serialize and each
change gets the next run ``version``. A change:

1. reads the live window (``status < TOMBSTONE``, oldest first; a partial index) — or,
   when this store object made the run's previous change, takes it from memory,
2. applies the policy (`falcon_lite.core.policy.rotate`, computed by the equivalent
   `falcon_lite.store.rotation.rotate_arrays`) to the window plus the new rows, which
   enter as VALIDATION with fresh ``seq`` numbers,
3. updates the moved rows with ``WHERE status = old`` (so no status moves backwards),
   inserts the new rows with their status after the rotation (a new row promoted or
   evicted at once is the same history collapsed into one transaction), and adjusts
   ``status_counts`` so `composition` never scans ``samples`` — in the dialect's own way
   (`sql_sqlite`, `sql_postgres`).

Each change returns a `falcon_lite.core.samples.Delta`, from which a `Mirror` of this
process follows it without a query. With ``group_commit_s > 0`` changes are committed in
groups (`falcon_lite.store.group_commit`): call `commit` when done; everything else this
process writes to the database goes through `settled`. Rows whose theta or x hold NaN/inf
(or whose log q/log prior is NaN) are not stored; they are counted in ``runs.rejected``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain

import numpy as np
from sqlalchemy import Connection, Engine, delete, select, update

from falcon_lite.core.policy import Sizes, Status
from falcon_lite.core.samples import Delta, Samples
from falcon_lite.store.composition import Composition, compose
from falcon_lite.store.db import check_schema, writer
from falcon_lite.store.dialects import dialect_for
from falcon_lite.store.errors import ConflictError, InvalidSampleError, NotFoundError
from falcon_lite.store.group_commit import GroupCommit
from falcon_lite.store.mirror import DEFAULT_HEARTBEAT_S, Mirror
from falcon_lite.store.models import Run, Sample, StatusCount, utcnow
from falcon_lite.store.readers import DEFAULT_READER_TIMEOUT_S, Readers, purge_floor
from falcon_lite.store.rotation import rotate_arrays

RUNS = Run.__table__
SAMPLES = Sample.__table__
COUNTS = StatusCount.__table__
TOMBSTONE = int(Status.TOMBSTONE)
_NONE = np.empty(0, np.int64)


class SampleStore:
    """One run's sample buffer in the database (see the module doc).

    Rows hold theta of ``dim`` values and x of shape ``x_shape`` (default ``(dim,)``), both
    in ``dtype`` (the runtimes store what was drawn and simulated: float64, whatever precision
    the estimator trains in). `sizes` may be replaced (``store.sizes = Sizes(...)``); call `rotate`
    afterwards.
    """

    def __init__(self, engine: Engine, run_id: int, sizes: Sizes, dim: int, dtype: str = "float64",
                 *, x_shape: tuple[int, ...] | None = None, group_commit_s: float = 0.0) -> None:
        if not isinstance(sizes, Sizes):
            raise TypeError(f"sizes must be a falcon_lite.core.policy.Sizes, got {type(sizes).__name__}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.x_shape = (dim,) if x_shape is None else tuple(int(s) for s in x_shape)
        if not self.x_shape or any(s < 1 for s in self.x_shape):
            raise ValueError(f"x_shape must be a tuple of positive sizes, got {x_shape!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype must be a float dtype, got {dtype!r}")
        check_schema(engine)
        self.engine = engine
        self.dialect = dialect_for(engine)
        self.run_id = int(run_id)
        self.sizes = sizes
        self.theta_dim = dim
        self.readers = Readers()
        self._group = GroupCommit(writer(engine), group_commit_s, self._lost, f"SampleStore of run {self.run_id}")
        self._window: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._pending_window: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None
        with engine.connect() as conn:
            if conn.execute(select(RUNS.c.id).where(RUNS.c.id == self.run_id)).first() is None:
                raise NotFoundError(f"run {run_id} not found")

    @property
    def dim(self) -> int:
        return self.theta_dim

    # -- writes -------------------------------------------------------------------------

    def append(self, samples: Samples) -> Delta:
        """Store one step's simulated samples as VALIDATION and rotate, in one transaction."""
        self._check(samples)
        ok = samples.finite()
        n_ok = int(np.count_nonzero(ok))
        rows = samples if n_ok == len(samples) else samples.take(ok)
        with self._change() as conn:
            next_seq, version = self._lock(conn, appended=n_ok, rejected=len(samples) - n_ok)
            seq = np.arange(next_seq - n_ok, next_seq, dtype=np.int64)
            moved, moved_to = self._rotate_and_write(conn, version, seq, rows)
        return Delta(version, rows.with_seq(seq), moved, moved_to, rejected=len(samples) - n_ok)

    def disfavour(self, seqs) -> Delta:
        """Mark TRAINING samples DISFAVOURED (others are ignored), then rotate."""
        seqs = np.unique(np.asarray(seqs, dtype=np.int64))
        with self._change() as conn:
            _, version = self._lock(conn)
            self._window = None  # statuses change below, outside the cached window's knowledge
            found = self.dialect.move_where(conn, self.run_id, seqs, int(Status.TRAINING), int(Status.DISFAVOURED),
                                            version) if len(seqs) else []
            delta = Counter()
            for _, o in found:
                delta[(int(Status.TRAINING), o)] -= 1
                delta[(int(Status.DISFAVOURED), o)] += 1
            self.dialect.add_counts(conn, self.run_id, delta)
            rotated, rotated_to = self._rotate_and_write(conn, version, _NONE)
        disfavoured = np.array(sorted(s for s, _ in found), np.int64)
        later = np.isin(disfavoured, rotated)  # moved on by the rotation: its move holds
        moved = np.concatenate([disfavoured[~later], rotated])
        moved_to = np.concatenate([np.full(np.count_nonzero(~later), int(Status.DISFAVOURED), np.int8), rotated_to])
        return Delta(version, None, moved, moved_to, disfavoured=len(found))

    def rotate(self) -> int:
        """Apply the policy with the current sizes without appending; return how many rows moved."""
        with self._change() as conn:
            _, version = self._lock(conn)
            moved, _ = self._rotate_and_write(conn, version, _NONE)
        return len(moved)

    def purge(self, reader_timeout_s: float = DEFAULT_READER_TIMEOUT_S) -> Delta:
        """Delete TOMBSTONE rows no reader can still hold; the delta says how many went.

        This process's mirrors first record the version they hold (so a mirror kept current
        with `Mirror.apply` alone never blocks purging). Readers whose heartbeat is older than
        `reader_timeout_s` are then dropped (a dropped mirror reloads in full on its next
        sync). With no readers left, every TOMBSTONE row goes.
        """
        with self.settled(), self.begin_write() as conn:
            _, version = self._lock(conn, bump=False)
            floor = purge_floor(conn, self.run_id, self.readers, reader_timeout_s)
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
                gone = self.dialect.purge(conn, self.run_id, TOMBSTONE, floor)
                n = len(gone)
                by_origin = np.bincount(np.fromiter(gone, np.int64, n), minlength=2).tolist()
            if n:
                self.dialect.add_counts(conn, self.run_id,
                                        Counter({(TOMBSTONE, o): -int(c) for o, c in enumerate(by_origin) if c}))
                conn.execute(update(RUNS).where(RUNS.c.id == self.run_id).values(purged=RUNS.c.purged + n))
        return Delta(version, purged=n)

    def commit(self) -> None:
        """Commit the held group of changes, if any. If the commit fails, the group's changes
        are lost: the error is raised and this store's mirrors reload in full on their next sync."""
        self._group.commit()

    def settled(self):
        """Commit the held group and keep this store's changes out until the block ends (for a
        write to the same database through another connection of this process: its purge, its
        mirrors, a run's metrics and checkpoints)."""
        return self._group.settled()

    # -- reads --------------------------------------------------------------------------

    def composition(self) -> Composition:
        """Counts by (status, origin), purged, rejected and the pool's prior share."""
        self.commit()
        with self.snapshot() as conn, conn.begin():
            run = conn.execute(
                select(RUNS.c.purged, RUNS.c.rejected).where(RUNS.c.id == self.run_id)
            ).one_or_none()
            if run is None:
                raise NotFoundError(f"run {self.run_id} not found")
            rows = conn.execute(
                select(COUNTS.c.status, COUNTS.c.origin, COUNTS.c.n).where(COUNTS.c.run_id == self.run_id)
            ).all()
        return compose(run.purged, run.rejected, rows)

    def mirror(self, name: str, heartbeat_s: float = DEFAULT_HEARTBEAT_S) -> Mirror:
        """Register an in-memory reader of this run's live samples (see `Mirror`)."""
        return Mirror(self, name, heartbeat_s=heartbeat_s)

    # -- what a Mirror reads through (`falcon_lite.store.readers.ReaderSource`) ----------

    def begin_write(self):
        """A write transaction of its own (not in the held group: use it inside `settled`)."""
        return self._group.writer.begin()

    def snapshot(self) -> Connection:
        """A connection whose transactions read one snapshot."""
        return self.dialect.snapshot(self.engine)

    # -- internals ----------------------------------------------------------------------

    def _check(self, samples: Samples) -> None:
        """The samples fit this store: `InvalidSampleError` names what does not."""
        if not isinstance(samples, Samples):
            raise InvalidSampleError(f"append takes falcon_lite.core.samples.Samples, got {type(samples).__name__}")
        if samples.step is None:
            raise InvalidSampleError("samples to append need the step that drew them (Samples(..., step=n))")
        if samples.x is None:
            raise InvalidSampleError("samples to append need their simulated x")
        if samples.theta.shape[1] != self.theta_dim:
            raise InvalidSampleError(f"theta must have shape (n, {self.theta_dim}), got {samples.theta.shape}")
        if samples.x.shape[1:] != self.x_shape:
            raise InvalidSampleError(f"x must have shape (n, {', '.join(map(str, self.x_shape))}), "
                                     f"got {samples.x.shape}")
        for name in ("theta", "x"):
            if getattr(samples, name).dtype != self.dtype:
                raise InvalidSampleError(f"{name} must have dtype {self.dtype}, got {getattr(samples, name).dtype}")

    def _lock(self, conn: Connection, bump: bool = True, appended: int = 0, rejected: int = 0) -> tuple[int, int]:
        """Lock the run row (an UPDATE), bump its version, count `appended` new seqs and
        `rejected` rows; return (next_seq, version) after. One fixed statement on each database."""
        row = self.dialect.lock(conn, self.run_id, appended, rejected, int(bump), utcnow())
        if row is None:
            raise NotFoundError(f"run {self.run_id} not found")
        return int(row[0]), int(row[1])

    def _rotate_and_write(self, conn: Connection, version: int, new_seq: np.ndarray,
                          rows: Samples | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rotate the live window plus the new rows; write the moves, the new rows and the counts.

        Returns (moved seqs, their new statuses), new rows that left VALIDATION included.
        """
        old_seq, old_status, old_origin = self._live_window(conn, version)
        n_old = len(old_seq)
        seq = np.concatenate([old_seq, new_seq])
        status = np.concatenate([old_status, np.zeros(len(new_seq), np.int8)])
        origin = old_origin if rows is None else np.concatenate([old_origin, rows.origin])
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
        new_rows = (rows, new_seq, final[n_old:]) if rows is not None and len(new_seq) else None
        self.dialect.write(conn, self.run_id, version, moves, new_rows, delta)
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
        found = conn.execute(
            select(SAMPLES.c.seq, SAMPLES.c.status, SAMPLES.c.origin)
            .where(SAMPLES.c.run_id == self.run_id, SAMPLES.c.status < TOMBSTONE)
            .order_by(SAMPLES.c.seq)
        ).all()
        old = np.fromiter(chain.from_iterable(found), np.int64, 3 * len(found)).reshape(-1, 3)
        return old[:, 0].copy(), old[:, 1].astype(np.int8), old[:, 2].astype(np.int8)

    @contextmanager
    def _change(self) -> Iterator[Connection]:
        """A change's transaction (or savepoint in the held group); the live window it computed
        is cached only once the change succeeded."""
        with self._group.lock:
            self._pending_window = None
            try:
                with self._group.change() as conn:
                    yield conn
                    self._window = self._pending_window
            except BaseException:
                self._window = None
                raise

    def _lost(self) -> None:
        """A group of changes was lost: forget the cached window; the mirrors reload in full."""
        self._window = None
        self.readers.mark_stale()
