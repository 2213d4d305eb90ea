"""Database fixtures: every store test runs on a real SQLite file AND a real PostgreSQL.

- `raw_db_url`: a fresh, empty database (no schema), parametrized ``sqlite`` /
  ``postgres``. SQLite: a new file under `tmp_path`. PostgreSQL: ``CREATE DATABASE
  flr_<random>`` on the server of ``FALCON_LITE_TEST_PG_URL`` (default
  ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``), dropped afterwards. An
  unreachable server skips the postgres case with the reason, unless
  ``FALCON_LITE_REQUIRE_POSTGRES=1``, which makes it fail instead.
- `db_url`: the same, with the schema made by running the migrations (`migrate`).
- `engine`: `make_engine(db_url)`, disposed afterwards.
- `pg_base_url`: the admin URL above, for tests that manage databases themselves.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from falcon_lite.store.db import make_engine, migrate

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _pg_base_url() -> str:
    return os.environ.get("FALCON_LITE_TEST_PG_URL", DEFAULT_PG_URL)


def _require_postgres() -> bool:
    return os.environ.get("FALCON_LITE_REQUIRE_POSTGRES", "") not in ("", "0", "false", "no")


def _admin_engine() -> Engine:
    return create_engine(_pg_base_url(), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})


@pytest.fixture(scope="session")
def pg_base_url() -> str:
    """The admin URL of the test PostgreSQL server; skips (or fails) if it is unreachable."""
    url = _pg_base_url()
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "no server"
        message = f"PostgreSQL not reachable at {make_url(url).render_as_string(hide_password=True)}: {exc}"
        if _require_postgres():
            pytest.fail(f"{message} (FALCON_LITE_REQUIRE_POSTGRES=1)")
        pytest.skip(f"{message} (set FALCON_LITE_REQUIRE_POSTGRES=1 to fail instead)")
    finally:
        engine.dispose()
    return url


def _fresh_pg_database(base_url: str) -> Iterator[str]:
    name = f"flr_{uuid.uuid4().hex[:16]}"
    admin = _admin_engine()
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def raw_db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A fresh empty database URL (no schema) on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'falcon-lite.db'}"
        return
    base = request.getfixturevalue("pg_base_url")
    yield from _fresh_pg_database(base)


@pytest.fixture
def db_url(raw_db_url: str) -> str:
    """A fresh database with the schema made by the migrations."""
    migrate(raw_db_url)
    return raw_db_url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()
