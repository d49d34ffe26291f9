"""The ladder's lower rungs: instructions per server and channel, listen mode, and the open book.

The open book is full-text indexed by the database itself: on SQLite an FTS5 table over the passages, kept in
step by triggers (external content: the text is stored once); on Postgres a GIN index on the passages'
English tsvector. Every Generation records the instructions' versions and the passages it was given.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FORGET_OLD = (
    "INSERT INTO passage_fts(passage_fts, rowid, title, text) VALUES ('delete', old.id, old.title, old.text);"
)
_SQLITE_INDEX = [
    "CREATE VIRTUAL TABLE passage_fts USING fts5(title, text, content='passage', content_rowid='id', "
    "tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER passage_fts_insert AFTER INSERT ON passage BEGIN "
    "INSERT INTO passage_fts(rowid, title, text) VALUES (new.id, new.title, new.text); END",
    f"CREATE TRIGGER passage_fts_delete AFTER DELETE ON passage BEGIN {_FORGET_OLD} END",
    f"CREATE TRIGGER passage_fts_update AFTER UPDATE OF title, text ON passage BEGIN {_FORGET_OLD} "
    "INSERT INTO passage_fts(rowid, title, text) VALUES (new.id, new.title, new.text); END",
]
# The same expression the store searches with, so the planner uses the index.
_POSTGRES_INDEX = (
    "CREATE INDEX ix_passage_search ON passage USING gin (to_tsvector('english', title || ' ' || text))"
)


def upgrade() -> None:
    op.create_table(
        "instructions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("channel_id", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("text", sa.String(), nullable=False),
        sa.Column("set_by", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instructions")),
        sa.UniqueConstraint(
            "scope", "channel_id", "version", name=op.f("uq_instructions_scope_channel_id_version")
        ),
    )
    op.create_table(
        "channelmode",
        sa.Column("channel_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("listen", sa.Boolean(), nullable=False),
        sa.Column("updated_by", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("channel_id", name=op.f("pk_channelmode")),
    )
    op.create_table(
        "passage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("title", sa.String(), nullable=False),
        sa.Column("text", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("author_id", sa.BigInteger(), nullable=True),
        sa.Column("added_by", sa.BigInteger(), nullable=True),
        sa.Column("correction_id", sa.Integer(), nullable=True),
        sa.Column("discord_message_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["correction_id"], ["correction.id"], name=op.f("fk_passage_correction_id_correction")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_passage")),
        sa.UniqueConstraint("scope", "discord_message_id", name=op.f("uq_passage_scope_discord_message_id")),
    )
    op.create_index(op.f("ix_passage_scope"), "passage", ["scope"], unique=False)
    op.create_index(op.f("ix_passage_author_id"), "passage", ["author_id"], unique=False)
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": _SQLITE_INDEX, "postgresql": [_POSTGRES_INDEX]}.get(dialect, []):
        op.execute(statement)
    # Plain ALTER TABLE on SQLite too (ADD and, since 3.35, DROP COLUMN): batch mode would copy the table,
    # which its populated foreign keys (message.generation_id) refuse.
    op.add_column("generation", sa.Column("instructions_version", sa.String(), nullable=True))
    op.add_column("generation", sa.Column("passage_ids", sa.JSON(), server_default="[]", nullable=False))


def downgrade() -> None:
    op.drop_column("generation", "passage_ids")
    op.drop_column("generation", "instructions_version")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE passage_fts")  # its triggers go with the passage table
    op.drop_table("passage")
    op.drop_table("channelmode")
    op.drop_table("instructions")
