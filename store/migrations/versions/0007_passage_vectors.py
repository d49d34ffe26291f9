"""The open book's hybrid ranking: a sentence embedding per passage and embedding model.

Each vector goes with its passage (ON DELETE CASCADE: removing a passage, /forget-me and opting out take its
vectors too). Existing books need no backfill: the bot embeds the passages it finds without a vector before
it searches.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "passagevector",
        sa.Column("passage_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["passage_id"],
            ["passage.id"],
            name=op.f("fk_passagevector_passage_id_passage"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("passage_id", "model", name=op.f("pk_passagevector")),
    )


def downgrade() -> None:
    op.drop_table("passagevector")
