"""Readers of a run's buffer and the purge floor.

A reader (a trainer's `Mirror`) is a row of ``readers``: the buffer version it holds and
when it last said so. TOMBSTONE rows stay until every live reader has seen the change that
made them; readers silent for longer than the timeout are dropped (a dropped mirror reloads
in full). `Readers` is what a store offers the mirrors of this process: they join it, the
store records their versions before a purge and marks them stale when a group of changes
was lost. `ReaderSource` is all a mirror asks of its store.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Protocol

import numpy as np
from sqlalchemy import Connection, delete, func, insert, select, update

from falcon_lite.store.models import Reader, utcnow

READERS = Reader.__table__
DEFAULT_READER_TIMEOUT_S = 600.0


class Follower(Protocol):
    """A reader in this process (a `Mirror`)."""

    name: str
    version: int
    closed: bool
    stale: bool


class Readers:
    """This process's readers of one store (weakly held: a dropped mirror leaves by itself)."""

    def __init__(self) -> None:
        self._members: weakref.WeakSet = weakref.WeakSet()

    def join(self, reader: Follower) -> None:
        self._members.add(reader)

    def __iter__(self) -> Iterator[Follower]:
        return (r for r in list(self._members) if not r.closed)

    def mark_stale(self) -> None:
        """Changes they may hold were lost: each reloads in full on its next sync."""
        for reader in self:
            reader.stale = True


class ReaderSource(Protocol):
    """What a mirror needs of a store: the run, the rows' shapes, and its database access."""

    run_id: int
    theta_dim: int
    x_shape: tuple[int, ...]
    dtype: np.dtype
    readers: Readers

    def settled(self) -> AbstractContextManager[None]: ...
    def begin_write(self) -> AbstractContextManager[Connection]: ...
    def snapshot(self) -> Connection: ...


def register(conn: Connection, run_id: int, name: str, version: int) -> None:
    """(Re)register reader `name` at `version`."""
    key = (READERS.c.run_id == run_id) & (READERS.c.name == name)
    conn.execute(delete(READERS).where(key))
    conn.execute(insert(READERS).values(run_id=run_id, name=name, version=version, heartbeat=utcnow()))


def record(conn: Connection, run_id: int, name: str, version: int) -> None:
    """Record the version reader `name` holds, and that it is alive. A reader dropped
    meanwhile stays absent (0 rows): re-registering is safe only after a full load."""
    conn.execute(
        update(READERS).where(READERS.c.run_id == run_id, READERS.c.name == name)
        .values(version=version, heartbeat=utcnow())
    )


def unregister(conn: Connection, run_id: int, name: str) -> None:
    conn.execute(delete(READERS).where(READERS.c.run_id == run_id, READERS.c.name == name))


def known_version(run_id: int, name: str):
    """The version reader `name` recorded, as a scalar subquery (NULL once dropped)."""
    return (
        select(READERS.c.version).where(READERS.c.run_id == run_id, READERS.c.name == name).scalar_subquery()
    )


def purge_floor(conn: Connection, run_id: int, readers: Readers, timeout_s: float) -> int | None:
    """Record this process's readers' versions, drop readers silent for `timeout_s`, and return
    the lowest version a live reader holds (None: no reader left)."""
    for reader in readers:
        record(conn, run_id, reader.name, reader.version)
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    conn.execute(delete(READERS).where(READERS.c.run_id == run_id, READERS.c.heartbeat < cutoff))
    return conn.execute(select(func.min(READERS.c.version)).where(READERS.c.run_id == run_id)).scalar_one_or_none()
