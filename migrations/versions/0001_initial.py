"""Initial schema: runs, samples, status_counts, readers, metrics, events, checkpoints.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

LIVE = sa.text("status < 3")


def _run_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["run_id"], ["runs.id"], name=f"fk_{table}_run_id_runs", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_seq", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("appended", sa.BigInteger(), nullable=False),
        sa.Column("rejected", sa.BigInteger(), nullable=False),
        sa.Column("purged", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
    )
    op.create_table(
        "samples",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("origin", sa.SmallInteger(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("theta", sa.LargeBinary(), nullable=False),
        sa.Column("x", sa.LargeBinary(), nullable=False),
        sa.Column("log_q", sa.Float(), nullable=False),
        sa.Column("log_prior", sa.Float(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        _run_fk("samples"),
        sa.PrimaryKeyConstraint("run_id", "seq", name="pk_samples"),
    )
    op.create_index(
        "ix_samples_live",
        "samples",
        ["run_id", "seq", "status", "origin"],
        postgresql_where=LIVE,
        sqlite_where=LIVE,
    )
    op.create_index("ix_samples_run_version", "samples", ["run_id", "version"])
    op.create_table(
        "status_counts",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("origin", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        _run_fk("status_counts"),
        sa.PrimaryKeyConstraint("run_id", "status", "origin", name="pk_status_counts"),
    )
    op.create_table(
        "readers",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("heartbeat", sa.DateTime(timezone=True), nullable=False),
        _run_fk("readers"),
        sa.PrimaryKeyConstraint("run_id", "name", name="pk_readers"),
    )
    op.create_table(
        "metrics",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        _run_fk("metrics"),
        sa.PrimaryKeyConstraint("run_id", "step", name="pk_metrics"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        _run_fk("events"),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_run_id_id", "events", ["run_id", "id"])
    op.create_table(
        "checkpoints",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("blob", sa.LargeBinary(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        _run_fk("checkpoints"),
        sa.PrimaryKeyConstraint("run_id", "step", name="pk_checkpoints"),
    )


def downgrade() -> None:
    for table in ("checkpoints", "events", "metrics", "readers", "status_counts"):
        op.drop_table(table)
    op.drop_index("ix_samples_run_version", table_name="samples")
    op.drop_index("ix_samples_live", table_name="samples")
    op.drop_table("samples")
    op.drop_table("runs")
