"""The deployment row: a random id that names this database's deployment.

Two deployments (two databases) may share one Ray cluster; their runs' actors are named
with this id, so that run 1 of one never meets run 1 of the other.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "deployment",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment")),
    )
    op.bulk_insert(table, [{"id": uuid.uuid4().hex[:12], "created": datetime.now(UTC)}])


def downgrade() -> None:
    op.drop_table("deployment")
