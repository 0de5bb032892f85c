"""When a worker last served each study, and two indexes: the workers' fair order reads each
owner's queue and last service down them, not by aggregating every study's trials.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

NEVER_SERVED = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def upgrade() -> None:
    with op.batch_alter_table("hpo_studies") as batch:
        batch.add_column(
            sa.Column(
                "served_at",
                sa.DateTime(timezone=True),
                nullable=False,
                server_default=sa.text("'1970-01-01 00:00:00+00'"),
            )
        )
    op.create_index("ix_hpo_studies_queue", "hpo_studies", ["status", "owner", "served_at", "id"])
    op.create_index("ix_hpo_studies_owner_served", "hpo_studies", ["owner", "served_at"])
    bind = op.get_bind()
    hpo = sa.table("hpo_studies", sa.column("name"), sa.column("served_at", sa.DateTime(True)))
    # As the scan read it before: a study's latest trial start (Optuna's tables exist once a
    # storage opened the database).
    bind.execute(hpo.update().values(served_at=NEVER_SERVED))  # one format on SQLite
    if not sa.inspect(bind).has_table("trials"):
        return
    studies = sa.table("studies", sa.column("study_id"), sa.column("study_name"))
    trials = sa.table("trials", sa.column("study_id"), sa.column("datetime_start"))
    latest = (
        sa.select(sa.func.max(trials.c.datetime_start))
        .join(studies, studies.c.study_id == trials.c.study_id)
        .where(studies.c.study_name == hpo.c.name)
        .scalar_subquery()
    )
    bind.execute(hpo.update().where(latest.is_not(None)).values(served_at=latest))


def downgrade() -> None:
    op.drop_index("ix_hpo_studies_owner_served", table_name="hpo_studies")
    op.drop_index("ix_hpo_studies_queue", table_name="hpo_studies")
    with op.batch_alter_table("hpo_studies") as batch:
        batch.drop_column("served_at")
