"""Alembic environment: runs migrations on a connection handed over by `migrate()`, or
on the URL from the config (falling back to the process settings for the alembic CLI)."""

from __future__ import annotations

from alembic import context

from falcon_lite.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from falcon_lite.store.db import migration_engine

    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from falcon_lite.settings import get_settings

        url = get_settings().db_url
    engine = migration_engine(url)
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run `falcon-lite migrate`")
run_migrations_online()
