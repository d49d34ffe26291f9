"""The stable hold-out: each prompt's side of the train / hold-out split, recorded when first seen.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "promptside",
        sa.Column("key_hash", sa.String(), nullable=False),
        sa.Column("held_out", sa.Boolean(), nullable=False),
        sa.Column("shingles", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key_hash", name=op.f("pk_promptside")),
    )


def downgrade() -> None:
    op.drop_table("promptside")
