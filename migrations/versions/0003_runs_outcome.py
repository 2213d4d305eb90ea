"""Every run that ends gets a verdict: ``runs.outcome``.

``calibrated``, ``exploded``, ``miscalibrated`` or ``diverged`` (the stress contract's outcomes)
where the problem has a reference posterior; the alarm's verdict otherwise (``alarm_raised``,
``alarm_quiet``). Null while a run is pending or running, and for runs that ended before this
revision (they get one when they end again).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("outcome", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("outcome")
