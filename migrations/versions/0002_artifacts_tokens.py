"""Artifact records written by workers; token expiry and revocation; drop the unused workers table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hpo_artifacts",
        sa.Column("artifact_id", sa.String(36), primary_key=True),
        sa.Column(
            "study_id",
            sa.Integer(),
            sa.ForeignKey("hpo_studies.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("trial_number", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_hpo_artifacts_study_id", "hpo_artifacts", ["study_id"])
    op.create_index("ix_hpo_artifacts_trial_id", "hpo_artifacts", ["trial_id"])
    with op.batch_alter_table("hpo_tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    op.drop_table("hpo_workers")


def downgrade() -> None:
    op.create_table(
        "hpo_workers",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column(
            "study_id",
            sa.Integer(),
            sa.ForeignKey("hpo_studies.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("hpo_tokens") as batch:
        batch.drop_column("revoked_at")
        batch.drop_column("expires_at")
    op.drop_index("ix_hpo_artifacts_trial_id", table_name="hpo_artifacts")
    op.drop_index("ix_hpo_artifacts_study_id", table_name="hpo_artifacts")
    op.drop_table("hpo_artifacts")
