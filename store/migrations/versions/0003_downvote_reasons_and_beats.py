"""Why a 👎 (a reason and free text on feedback), the trainer service's sign of life, and when a run's
result was posted (runs that ended before this revision count as posted).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("reason", sa.String(), nullable=True))
        batch.add_column(sa.Column("reason_text", sa.String(), nullable=True))
    with op.batch_alter_table("trainingrun") as batch:
        batch.add_column(sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True))
    finished = "('succeeded', 'failed', 'rejected', 'skipped')"
    op.execute(f"UPDATE trainingrun SET notified_at = finished_at WHERE status IN {finished}")
    op.create_table(
        "servicebeat",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_servicebeat")),
    )


def downgrade() -> None:
    op.drop_table("servicebeat")
    with op.batch_alter_table("trainingrun") as batch:
        batch.drop_column("notified_at")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("reason_text")
        batch.drop_column("reason")
