"""Engines, sessions and the schema's revision.

- `make_engine(url)`: SQLite files run in WAL mode with foreign keys on and a busy
  timeout (the parent directory is created); PostgreSQL goes through psycopg 3
  (``postgresql+psycopg://``; a bare ``postgresql://`` URL is read the same way).
- `migrate(url)`: upgrade to the newest Alembic revision, programmatically (on SQLite
  with foreign-key enforcement off while it runs: see `migration_engine`). The Alembic
  scripts live in the top-level ``migrations/`` folder next to the ``falcon_lite``
  package (a source checkout or editable install); `migrate` finds them there from any
  working directory. ``FALCON_LITE_MIGRATIONS`` is *not* read here (store code never
  reads the environment): pass ``script_location`` to point elsewhere.
- `check_schema(engine)`: refuse to run on a missing or unknown schema.
- `session_factory(engine)`: a `sessionmaker` whose transactions, on SQLite, take the
  write lock when they begin (``BEGIN IMMEDIATE``), so a read-then-write transaction can
  never fail half-way with "database is locked"; PostgreSQL is unaffected.

On SQLite the driver's own implicit transaction handling is switched off and every
transaction is opened by SQLAlchemy (the recipe from the SQLAlchemy docs), so a
transaction's reads see one snapshot. A connection with the execution option
``sqlite_begin="IMMEDIATE"`` opens its transactions with ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from falcon_lite.store.errors import SchemaError

# The Alembic revision this code was written for (tests check it is the scripts' head).
SCHEMA_REVISION = "0004"

REPO_ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = REPO_ROOT / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 here."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str, **kwargs) -> Engine:
    """Create an engine for a SQLite file or a PostgreSQL database (see the module doc)."""
    url = normalize_url(url)
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        _configure_sqlite(engine)
        return engine
    if backend == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            raise ValueError(f"PostgreSQL URLs must use psycopg 3 (postgresql+psycopg://), got {url!r}")
        # No pool_pre_ping by default: it costs a round trip per checkout (pass it to opt in).
        return create_engine(url, **kwargs)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql+psycopg://...")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, connection_record) -> None:  # noqa: ARG001
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA cache_size = -65536")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())


def writer(engine: Engine) -> Engine:
    """The engine whose SQLite transactions take the write lock at BEGIN (`sqlite_begin` is
    an option of this module's SQLite engines alone: PostgreSQL ignores it)."""
    return engine.execution_options(sqlite_begin="IMMEDIATE")


@contextmanager
def driver_cursor(conn: Connection) -> Iterator[Any]:
    """A DBAPI cursor inside `conn`'s transaction, for the hot path (no per-statement SQLAlchemy
    work); driver errors come out as SQLAlchemy's `DBAPIError` subclasses, as from `execute`."""
    cursor = conn.connection.cursor()
    try:
        yield cursor
    except conn.dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(None, None, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect) from exc
    finally:
        cursor.close()


def driver_sql(conn: Connection, statement: str) -> None:
    """One parameterless statement in `conn`'s transaction, on the driver's cursor."""
    with driver_cursor(conn) as cursor:
        cursor.execute(statement)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for the run/metrics/events functions; the caller commits."""
    return sessionmaker(bind=writer(engine), expire_on_commit=False)


def alembic_config(url: str, script_location: Path | str | None = None):
    """An Alembic `Config` for `url`, built in code (no alembic.ini needed)."""
    from alembic.config import Config

    location = Path(script_location) if script_location else MIGRATIONS_DIR
    if not (location / "env.py").is_file():
        raise SchemaError(
            f"Alembic scripts not found at {location}: falcon-lite migrates from its source checkout's "
            "migrations/ folder (pass script_location to use another)"
        )
    config = Config()
    config.set_main_option("script_location", str(location))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head", script_location: Path | str | None = None) -> str:
    """Upgrade the database at `url` to `revision` (default: newest); return the revision now."""
    from alembic import command

    config = alembic_config(url, script_location)
    engine = migration_engine(url)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
        return current_revision(engine) or ""
    finally:
        engine.dispose()


def migration_engine(url: str) -> Engine:
    """An engine to migrate with: on SQLite, foreign-key enforcement is off on its
    connections, as SQLite's table-rebuild procedure needs (dropping a rebuilt parent
    table would otherwise cascade into its children); migrations that rebuild a table
    check the keys themselves afterwards (``PRAGMA foreign_key_check``)."""
    engine = make_engine(url)
    if make_url(normalize_url(url)).get_backend_name() == "sqlite":

        @event.listens_for(engine, "connect")
        def _foreign_keys_off(dbapi_connection, connection_record) -> None:  # noqa: ARG001
            dbapi_connection.execute("PRAGMA foreign_keys = OFF")  # after make_engine's ON

    return engine


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision stamped in the database, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def check_schema(engine: Engine) -> None:
    """Raise `SchemaError` unless the database is at `SCHEMA_REVISION`."""
    found = current_revision(engine)
    if found != SCHEMA_REVISION:
        where = "has no falcon-lite schema" if found is None else f"at revision {found}"
        raise SchemaError(
            f"database {where}, this falcon-lite needs {SCHEMA_REVISION}: run `falcon-lite migrate`"
        )
