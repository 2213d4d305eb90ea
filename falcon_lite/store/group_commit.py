"""Group commit: a store's changes in one held transaction, each under its own savepoint.

With ``seconds > 0`` a change's transaction stays open, and later changes join it, until
``seconds`` have passed since it began (checked after each change) or `commit` is called.
A change that fails is undone alone (its savepoint) and the group goes on. What a change
returned is durable only after the commit: a crash loses the uncommitted changes, never a
committed one. The group holds the database's write lock while it is open, so everything
else the process writes to that database goes through `settled` (commit, and no new group
until done). If a commit fails, or a savepoint does, the whole group is lost: `on_lost` is
called (the store forgets what it cached, its readers reload) and the error is raised.

With ``seconds == 0`` every change is a transaction of its own.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from sqlalchemy import Connection, Engine

from falcon_lite.store.db import driver_sql


class GroupCommit:
    """Transactions for one store's changes (see the module doc)."""

    def __init__(self, writer: Engine, seconds: float, on_lost: Callable[[], None], label: str) -> None:
        if isinstance(seconds, bool) or not (isinstance(seconds, (int, float)) and 0 <= seconds < float("inf")):
            raise ValueError(f"group_commit_s must be a finite number >= 0, got {seconds!r}")
        self.writer = writer
        self.seconds = float(seconds)
        self.on_lost = on_lost
        self.label = label
        self.lock = threading.RLock()  # one change at a time; held by `settled` too
        self._held: tuple[Connection, Any, float] | None = None  # (connection, transaction, began)

    @contextmanager
    def change(self) -> Iterator[Connection]:
        """A write transaction, or a savepoint in the held group."""
        with self.lock:
            if self.seconds <= 0:
                with self.writer.begin() as conn:
                    yield conn
                return
            conn = self._hold()
            try:
                driver_sql(conn, "SAVEPOINT change")
            except BaseException:
                self._drop()
                raise
            try:
                yield conn
            except BaseException:
                try:
                    driver_sql(conn, "ROLLBACK TO SAVEPOINT change")
                    driver_sql(conn, "RELEASE SAVEPOINT change")
                except BaseException:
                    self._drop()
                raise
            try:
                driver_sql(conn, "RELEASE SAVEPOINT change")
            except BaseException:  # the change's fate is unknown: raised must mean not stored
                self._drop()
                raise
            if time.monotonic() - self._held[2] >= self.seconds:
                self.commit()

    @contextmanager
    def settled(self) -> Iterator[None]:
        """Commit the held group and keep new changes out until the block ends (for a write to
        the same database through another connection of this process, which would otherwise
        wait for this very process's lock)."""
        with self.lock:
            self.commit()
            yield

    def commit(self) -> None:
        """Commit the held group of changes, if any; if that fails they are lost (see the module doc)."""
        with self.lock:
            if self._held is None:
                return
            conn, transaction, _ = self._held
            self._held = None
            try:
                transaction.commit()
            except BaseException:
                self.on_lost()
                raise
            finally:
                conn.close()

    @property
    def holding(self) -> bool:
        return self._held is not None

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

    def _drop(self) -> None:
        """Roll the held group back (a savepoint failed: the caller raises that error)."""
        if self._held is None:
            return
        conn, transaction, _ = self._held
        self._held = None
        self.on_lost()
        with suppress(Exception):  # a broken connection has nothing left to roll back
            transaction.rollback()
        with suppress(Exception):
            conn.close()

    def __del__(self) -> None:
        if getattr(self, "_held", None) is not None:
            warnings.warn(f"{self.label} dropped with uncommitted changes: they are lost (call commit())",
                          ResourceWarning, stacklevel=1)
