"""Run ids are never given twice: ``runs.id`` becomes AUTOINCREMENT on SQLite.

Clients, SSE ``Last-Event-ID`` and Prometheus labels name runs by id, so a deleted run's
id must not come back. A plain SQLite ``INTEGER PRIMARY KEY`` hands out max(id) + 1,
which reuses the id of a deleted newest run; with AUTOINCREMENT SQLite keeps the
highest id ever used in ``sqlite_sequence``. SQLite cannot add AUTOINCREMENT to a table,
so the table is rebuilt (batch mode: copy, drop, rename), keeping every row and its id;
the copy seeds ``sqlite_sequence`` with the highest id stored. `migrate()` runs this with
foreign-key enforcement off, as SQLite's table-rebuild procedure requires, so dropping
the old table does not cascade into the samples, metrics, events and checkpoints that
refer to it, and checks the foreign keys afterwards.

PostgreSQL: nothing to do; the ``runs_id_seq`` sequence never hands out a value twice.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _rebuild_runs(autoincrement: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        # Dropping the old table would delete every run's samples through ON DELETE CASCADE.
        raise RuntimeError(
            "rebuilding the runs table needs SQLite's foreign-key enforcement off: "
            "run `falcon-lite migrate` (or falcon_lite.store.db.migrate), which turns it off"
        )
    with op.batch_alter_table("runs", recreate="always",
                              table_kwargs={"sqlite_autoincrement": autoincrement}):
        pass
    broken = bind.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise RuntimeError(f"rows refer to missing runs after rebuilding the runs table: {broken[:5]}")


def upgrade() -> None:
    _rebuild_runs(True)


def downgrade() -> None:
    _rebuild_runs(False)
