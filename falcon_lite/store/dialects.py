"""The database's capabilities, decided once per engine: `dialect_for(engine)`.

Each SQL dialect lives in a module of its own (`sql_sqlite`, `sql_postgres`) with its
statements and what it can do (`group_commit_s`, `own_writer`, `inline_reads`); this is the
one place that looks at the engine's dialect name.
"""

from __future__ import annotations

import weakref

from sqlalchemy import Engine

from falcon_lite.store.sql_postgres import PostgreSQL
from falcon_lite.store.sql_sqlite import SQLite

Dialect = SQLite | PostgreSQL
_KINDS: dict[str, type] = {"sqlite": SQLite, "postgresql": PostgreSQL}
_MADE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def dialect_for(engine: Engine) -> Dialect:
    """The dialect of `engine` (one object per engine)."""
    engine = getattr(engine, "engine", engine)  # an engine with execution options: its base
    found = _MADE.get(engine)
    if found is None:
        try:
            kind = _KINDS[engine.dialect.name]
        except KeyError:
            raise ValueError(f"unsupported database {engine.dialect.name!r}: use SQLite or PostgreSQL") from None
        found = _MADE[engine] = kind(engine)
    return found
