"""A study's trial cap as a column: the workers' scan reads it instead of every spec's JSON.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _cap(spec: dict[str, Any]) -> int | None:
    # As the scan read it before: the count budget unless a scheduler decides. New rows also
    # cap a grid at its size (hpo.core.fairshare.trial_cap); old grids keep the budget.
    search = spec.get("search") or {}
    if (search.get("scheduler") or {}).get("type", "none") != "none":
        return None
    return (search.get("budget") or {}).get("max_trials")


def upgrade() -> None:
    with op.batch_alter_table("hpo_studies") as batch:
        batch.add_column(sa.Column("trial_cap", sa.Integer(), nullable=True))
    table = sa.table("hpo_studies", sa.column("id"), sa.column("spec"), sa.column("trial_cap"))
    bind = op.get_bind()
    for row_id, spec in bind.execute(sa.select(table.c.id, table.c.spec)).all():
        spec = json.loads(spec) if isinstance(spec, str) else spec
        bind.execute(table.update().where(table.c.id == row_id).values(trial_cap=_cap(spec)))


def downgrade() -> None:
    with op.batch_alter_table("hpo_studies") as batch:
        batch.drop_column("trial_cap")
