"""Idle workers, so a full fleet can be told from one with a free worker (preemption).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hpo_workers",
        sa.Column("worker_id", sa.String(128), primary_key=True),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("free_until", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_hpo_workers_free_until", "hpo_workers", ["free_until"])


def downgrade() -> None:
    op.drop_index("ix_hpo_workers_free_until", table_name="hpo_workers")
    op.drop_table("hpo_workers")
