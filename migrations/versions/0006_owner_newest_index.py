"""An (owner, id) index on studies: warm start's ``auto`` reads an owner's newest studies
by walking it, whatever the owner's number of studies.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_hpo_studies_owner_id", "hpo_studies", ["owner", "id"])


def downgrade() -> None:
    op.drop_index("ix_hpo_studies_owner_id", table_name="hpo_studies")
