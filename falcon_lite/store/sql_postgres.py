"""The sample buffer's SQL on PostgreSQL: one statement per change.

Moves, new rows and count changes go in ONE statement (data-modifying CTEs over unnest
arrays): the parts touch disjoint rows, so running them in one snapshot is safe, and it
costs one round trip and no per-row parameters. theta and x travel as one blob each (rows
back to back) and are cut per row on the server: a bytea[] parameter is escaped element
by element on the client, ~10x slower. Several processes write at once here: on Ray a
writer actor stores the batches beside the trainer, and the inline runtime commits each
change alone (the savepoints of a group cost more round trips than the commits they save).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from sqlalchemy import BigInteger, Connection, Engine, any_, bindparam, delete, text, update
from sqlalchemy.dialects.postgresql import ARRAY

from falcon_lite.store.errors import ConflictError
from falcon_lite.store.models import Run, Sample

SAMPLES = Sample.__table__
_LOCK = text(
    "UPDATE runs SET next_seq = next_seq + :next, appended = appended + :appended, rejected = rejected + :rejected, "
    "version = version + :bump, updated = :updated WHERE id = :run_id RETURNING next_seq, version"
).bindparams(bindparam("updated", type_=Run.__table__.c.updated.type))
_COUNTS = text(
    "UPDATE status_counts SET n = n + :b_n WHERE run_id = :b_run AND status = :b_status AND origin = :b_origin"
)
_MOVES = (
    "moved AS (UPDATE samples AS s SET status = m.new, version = :version "
    "FROM unnest(CAST(:m_seq AS BIGINT[]), CAST(:m_old AS SMALLINT[]), CAST(:m_new AS SMALLINT[])) "
    "AS m(seq, old, new) "
    "WHERE s.run_id = :run_id AND s.seq = m.seq AND s.status = m.old RETURNING 1), "
    "counted AS (UPDATE status_counts AS c SET n = c.n + d.n "
    "FROM unnest(CAST(:c_status AS SMALLINT[]), CAST(:c_origin AS SMALLINT[]), CAST(:c_n AS BIGINT[])) "
    "AS d(status, origin, n) "
    "WHERE c.run_id = :run_id AND c.status = d.status AND c.origin = d.origin RETURNING 1)"
)
_INSERT = (
    "inserted AS (INSERT INTO samples (run_id, seq, status, origin, step, theta, x, log_q, log_prior, version) "
    "SELECT :run_id, u.seq, u.status, u.origin, :step, "
    "substring(CAST(:theta AS BYTEA) FROM CAST((u.i - 1) * :theta_width + 1 AS INTEGER) FOR :theta_width), "
    "substring(CAST(:x AS BYTEA) FROM CAST((u.i - 1) * :x_width + 1 AS INTEGER) FOR :x_width), "
    "u.log_q, u.log_prior, :version "
    "FROM unnest(CAST(:seq AS BIGINT[]), CAST(:status AS SMALLINT[]), CAST(:origin AS SMALLINT[]), "
    "CAST(:log_q AS FLOAT8[]), CAST(:log_prior AS FLOAT8[])) WITH ORDINALITY "
    "AS u(seq, status, origin, log_q, log_prior, i) RETURNING 1)"
)
_SELECT = " SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM counted)"
_WRITE = text("WITH " + _MOVES + _SELECT)
_WRITE_INSERT = text("WITH " + _MOVES + ", " + _INSERT + _SELECT)
_SEQS = bindparam("seqs", type_=ARRAY(BigInteger))


class PostgreSQL:
    """Statements and capabilities of the deployed database (see the module doc)."""

    name = "postgresql"
    group_commit_s = 0.0  # each change commits alone (see the module doc)
    own_writer = True  # Ray: a writer actor stores the batches beside the trainer
    inline_reads = False  # the API reads in worker threads: a server round trip may take a while

    def __init__(self, engine: Engine) -> None:
        del engine  # nothing to bind by hand: the statements go through SQLAlchemy

    def snapshot(self, engine: Engine) -> Connection:
        """A connection whose transaction's reads see one snapshot (REPEATABLE READ)."""
        return engine.connect().execution_options(isolation_level="REPEATABLE READ")

    def lock(self, conn: Connection, run_id: int, appended: int, rejected: int, bump: int, now) -> tuple | None:
        params = {"next": appended, "appended": appended, "rejected": rejected, "bump": bump, "updated": now,
                  "run_id": run_id}
        return conn.execute(_LOCK, params).one_or_none()

    def write(self, conn: Connection, run_id: int, version: int, moves, new_rows, delta: Counter) -> None:
        """The moves (`moves`: seqs, old, new statuses), the new rows and the count changes."""
        seqs, olds, news = moves
        params: dict[str, Any] = {
            "run_id": run_id, "version": version,
            "m_seq": seqs.tolist(), "m_old": olds.tolist(), "m_new": news.tolist(),
            "c_status": [s for s, _ in delta], "c_origin": [o for _, o in delta], "c_n": list(delta.values()),
        }
        statement = _WRITE
        if new_rows is not None:
            rows, new_seq, new_status = new_rows
            params.update({
                "step": rows.step, "seq": new_seq.tolist(), "status": new_status.tolist(),
                "origin": rows.origin.tolist(), "log_q": rows.log_q.tolist(), "log_prior": rows.log_prior.tolist(),
                "theta": rows.theta.tobytes(), "theta_width": _width(rows.theta),
                "x": np.ascontiguousarray(rows.x).tobytes(), "x_width": _width(rows.x),
            })
            statement = _WRITE_INSERT
        moved, counted = conn.execute(statement, params).one()
        if moved != len(seqs):
            raise ConflictError(f"run {run_id}: {len(seqs) - moved} samples changed status concurrently")
        if counted != len(delta):
            raise ConflictError(f"run {run_id}: status counts missing ({counted} of {len(delta)} rows)")

    def add_counts(self, conn: Connection, run_id: int, delta: Counter) -> None:
        """Add `delta` {(status, origin): d} to ``status_counts`` (off the hot path: appends
        count inside `write`)."""
        params = [{"b_n": d, "b_run": run_id, "b_status": s, "b_origin": o} for (s, o), d in sorted(delta.items()) if d]
        if params:
            conn.execute(_COUNTS, params)

    def move_where(self, conn: Connection, run_id: int, seqs: np.ndarray, old: int, new: int,
                   version: int) -> list[tuple[int, int]]:
        """Move the rows of `seqs` whose status is `old` to `new`; (seq, origin) of those moved."""
        statement = (
            update(SAMPLES)
            .where(SAMPLES.c.run_id == run_id, SAMPLES.c.seq == any_(_SEQS), SAMPLES.c.status == old)
            .values(status=new, version=version)
            .returning(SAMPLES.c.seq, SAMPLES.c.origin)
        )
        return [tuple(r) for r in conn.execute(statement, {"seqs": seqs.tolist()}).all()]

    def purge(self, conn: Connection, run_id: int, tombstone: int, floor: int) -> list[int]:
        """Delete TOMBSTONE rows at versions up to `floor`; their origins."""
        statement = (
            delete(SAMPLES)
            .where(SAMPLES.c.run_id == run_id, SAMPLES.c.status == tombstone, SAMPLES.c.version <= floor)
            .returning(SAMPLES.c.origin)
        )
        return list(conn.execute(statement).scalars())


def _width(a: np.ndarray) -> int:
    """Bytes per row."""
    return int(np.prod(a.shape[1:], dtype=np.int64)) * a.itemsize


