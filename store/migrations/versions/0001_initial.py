"""The initial schema: messages, generations, votes, corrections, adapter versions, training runs, prefs.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

message.generation_id and generation.request_message_id point at each other. The message key is declared
use_alter: SQLite (which cannot ALTER constraints, and does not check targets at CREATE) writes it inline,
other databases skip it in CREATE TABLE and it is added once generation exists.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "adapterversion",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("parent", sa.String(), nullable=True),
        sa.Column("base_model", sa.String(), nullable=True),
        sa.Column("method", sa.String(), nullable=True),
        sa.Column("path", sa.String(), nullable=True),
        sa.Column("dataset_counts", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("status_reason", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapterversion")),
        sa.UniqueConstraint("name", name=op.f("uq_adapterversion_name")),
    )
    op.create_index(
        "uq_adapterversion_active_scope",
        "adapterversion",
        ["scope"],
        unique=True,
        sqlite_where=sa.text("status = 'active'"),
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_table(
        "message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("discord_id", sa.BigInteger(), nullable=True),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("channel_id", sa.BigInteger(), nullable=True),
        sa.Column("author_id", sa.BigInteger(), nullable=True),
        sa.Column("author_name", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("content", sa.String(), nullable=False),
        sa.Column("reply_to", sa.BigInteger(), nullable=True),
        sa.Column("generation_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["generation.id"],
            name=op.f("fk_message_generation_id_generation"),
            use_alter=True,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message")),
        sa.UniqueConstraint("discord_id", name=op.f("uq_message_discord_id")),
    )
    op.create_index(op.f("ix_message_author_id"), "message", ["author_id"], unique=False)
    op.create_index(op.f("ix_message_generation_id"), "message", ["generation_id"], unique=False)
    op.create_table(
        "trainingrun",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("requested_by", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("total_steps", sa.Integer(), nullable=True),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("adapter_version", sa.String(), nullable=True),
        sa.Column("notify_channel_id", sa.BigInteger(), nullable=True),
        sa.Column("notify_message_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trainingrun")),
    )
    op.create_index("ix_trainingrun_scope_status", "trainingrun", ["scope", "status"], unique=False)
    op.create_table(
        "userprefs",
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("opted_out", sa.Boolean(), nullable=False),
        sa.Column("opted_out_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("forgotten_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_userprefs")),
    )
    op.create_table(
        "generation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("request_message_id", sa.Integer(), nullable=True),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("channel_id", sa.BigInteger(), nullable=True),
        sa.Column("prompt", sa.JSON(), nullable=False),
        sa.Column("completion", sa.String(), nullable=False),
        sa.Column("adapter_version", sa.String(), nullable=True),
        sa.Column("sampling", sa.JSON(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("discord_message_ids", sa.JSON(), nullable=False),
        sa.Column("regenerates", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["regenerates"], ["generation.id"], name=op.f("fk_generation_regenerates_generation")
        ),
        sa.ForeignKeyConstraint(
            ["request_message_id"], ["message.id"], name=op.f("fk_generation_request_message_id_message")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generation")),
    )
    op.create_index(op.f("ix_generation_scope"), "generation", ["scope"], unique=False)
    op.create_index(op.f("ix_generation_user_id"), "generation", ["user_id"], unique=False)
    op.create_table(
        "correction",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("author_id", sa.BigInteger(), nullable=False),
        sa.Column("content", sa.String(), nullable=False),
        sa.Column("discord_interaction_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"], ["generation.id"], name=op.f("fk_correction_generation_id_generation")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_correction")),
        sa.UniqueConstraint("discord_interaction_id", name=op.f("uq_correction_discord_interaction_id")),
    )
    op.create_index(op.f("ix_correction_author_id"), "correction", ["author_id"], unique=False)
    op.create_index(op.f("ix_correction_generation_id"), "correction", ["generation_id"], unique=False)
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("rater_id", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("value IN (1, -1)", name=op.f("ck_feedback_value_is_vote")),
        sa.ForeignKeyConstraint(
            ["generation_id"], ["generation.id"], name=op.f("fk_feedback_generation_id_generation")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.UniqueConstraint("generation_id", "rater_id", name=op.f("uq_feedback_generation_id_rater_id")),
    )
    op.create_index(op.f("ix_feedback_rater_id"), "feedback", ["rater_id"], unique=False)
    if op.get_context().dialect.supports_alter:
        op.create_foreign_key(
            op.f("fk_message_generation_id_generation"), "message", "generation", ["generation_id"], ["id"]
        )


def downgrade() -> None:
    if op.get_context().dialect.supports_alter:
        op.drop_constraint(op.f("fk_message_generation_id_generation"), "message", type_="foreignkey")
    op.drop_index(op.f("ix_feedback_rater_id"), table_name="feedback")
    op.drop_table("feedback")
    op.drop_index(op.f("ix_correction_generation_id"), table_name="correction")
    op.drop_index(op.f("ix_correction_author_id"), table_name="correction")
    op.drop_table("correction")
    op.drop_index(op.f("ix_generation_user_id"), table_name="generation")
    op.drop_index(op.f("ix_generation_scope"), table_name="generation")
    op.drop_table("generation")
    op.drop_table("userprefs")
    op.drop_index("ix_trainingrun_scope_status", table_name="trainingrun")
    op.drop_table("trainingrun")
    op.drop_index(op.f("ix_message_generation_id"), table_name="message")
    op.drop_index(op.f("ix_message_author_id"), table_name="message")
    op.drop_table("message")
    op.drop_index(
        "uq_adapterversion_active_scope",
        table_name="adapterversion",
        sqlite_where=sa.text("status = 'active'"),
        postgresql_where=sa.text("status = 'active'"),
    )
    op.drop_table("adapterversion")
