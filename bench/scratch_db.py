"""A throwaway database for a bench: a SQLite file in a folder, or a fresh PostgreSQL database
on the server of ``FALCON_LITE_TEST_PG_URL`` (the tests' server), dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

PG_ADMIN = os.environ.get("FALCON_LITE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@contextmanager
def scratch_database(kind: str, folder: str, name: str = "bench.db") -> Iterator[str]:
    """The URL of an empty database (no schema) of `kind` ("sqlite" or "postgres"); a
    SQLite file goes in `folder` (the caller removes it)."""
    if kind == "sqlite":
        yield f"sqlite:///{folder}/{name}"
        return
    database = f"flr_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
        try:
            yield sa.make_url(PG_ADMIN).set(database=database).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    finally:
        admin.dispose()
