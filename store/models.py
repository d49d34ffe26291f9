"""Every table gradschool keeps, as SQLModel classes.

Discord ids are 64-bit, so they are BigInteger. Timestamps are timezone-aware UTC: SQLModel's `UTCDateTime`
(the column type it gives every `datetime` field) refuses naive values and hands back aware UTC datetimes,
also on SQLite, which stores them without an offset. Table models skip pydantic validation, so the
Literal-typed columns are plain strings in the database and are checked by the CRUD functions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, get_args

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

Role = Literal["user", "assistant"]
Method = Literal["sft", "sft+dpo", "sft+kto"]
AdapterStatus = Literal["training", "candidate", "active", "rejected", "retired"]
RunStatus = Literal["queued", "running", "succeeded", "failed", "rejected", "skipped"]
RunReason = Literal["schedule", "admin", "threshold"]
DownvoteReason = Literal["wrong", "too_long", "off_topic", "tone", "other"]
PassageSource = Literal["admin", "pinned", "correction"]
PassageStatus = Literal["accepted", "pending"]

ROLES: tuple[Role, ...] = get_args(Role)
METHODS: tuple[Method, ...] = get_args(Method)
ADAPTER_STATUSES: tuple[AdapterStatus, ...] = get_args(AdapterStatus)
RUN_STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)
RUN_REASONS: tuple[RunReason, ...] = get_args(RunReason)
DOWNVOTE_REASONS: tuple[DownvoteReason, ...] = get_args(DownvoteReason)
PASSAGE_SOURCES: tuple[PassageSource, ...] = get_args(PassageSource)
PASSAGE_STATUSES: tuple[PassageStatus, ...] = get_args(PassageStatus)

# Named constraints let Alembic alter them later (SQLite batch mode needs the names).
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class Message(SQLModel, table=True):
    """One message the bot saw or sent (on Discord, or from the CLI, which has no Discord id)."""

    id: int | None = Field(default=None, primary_key=True)
    discord_id: int | None = Field(default=None, sa_type=sa.BigInteger, unique=True)
    guild_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    channel_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    author_id: int | None = Field(default=None, sa_type=sa.BigInteger, index=True)
    author_name: str = ""
    role: Role = Field(sa_type=sa.String)
    content: str
    reply_to: int | None = Field(default=None, sa_type=sa.BigInteger)  # discord id of the message replied to
    # On the bot's own messages: a reaction on any part of a split answer finds its Generation.
    # use_alter: message and generation reference each other; Postgres adds this key after both exist.
    generation_id: int | None = Field(
        default=None,
        index=True,
        sa_column_args=[sa.ForeignKey("generation.id", use_alter=True)],
    )
    created_at: datetime = Field(default_factory=utcnow)


class Generation(SQLModel, table=True):
    """One reply of the model: exactly what it was given, what it said, and how."""

    id: int | None = Field(default=None, primary_key=True)
    scope: str = Field(default="global", index=True)
    request_message_id: int | None = Field(default=None, foreign_key="message.id")
    user_id: int | None = Field(default=None, sa_type=sa.BigInteger, index=True)  # the asker
    guild_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    channel_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    prompt: list[dict[str, Any]] = Field(sa_type=sa.JSON)  # the chat-messages list given to the model
    completion: str
    adapter_version: str | None = None  # None = the base model
    sampling: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    discord_message_ids: list[int] = Field(default_factory=list, sa_type=sa.JSON)
    regenerates: int | None = Field(default=None, foreign_key="generation.id")  # the answer this replaces
    # Set when the model failed mid-answer (its engine went down): `completion` holds what it had said. Such
    # a reply was never shown as an answer, and no dataset uses it.
    error: str | None = None
    # The lower rungs of the ladder in play: the instructions' versions ("s3+c1": the server's third, the
    # channel's first; None: none) and the open book's passages shown (Passage ids).
    instructions_version: str | None = None
    passage_ids: list[int] = Field(
        default_factory=list, sa_type=sa.JSON, sa_column_kwargs={"server_default": "[]"}
    )
    created_at: datetime = Field(default_factory=utcnow)


class Feedback(SQLModel, table=True):
    """One person's vote on one generation; retracting sets removed_at, voting again revives it."""

    __table_args__ = (
        sa.UniqueConstraint("generation_id", "rater_id"),
        sa.CheckConstraint("value IN (1, -1)", name="value_is_vote"),
    )

    id: int | None = Field(default=None, primary_key=True)
    generation_id: int = Field(foreign_key="generation.id")
    rater_id: int = Field(sa_type=sa.BigInteger, index=True)
    value: int
    reason: str | None = None  # why a 👎, when the voter said: one of DOWNVOTE_REASONS
    reason_text: str | None = None  # their own words, for "other"
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    removed_at: datetime | None = None


class Correction(SQLModel, table=True):
    """A better answer a person wrote for a generation."""

    id: int | None = Field(default=None, primary_key=True)
    generation_id: int = Field(foreign_key="generation.id", index=True)
    author_id: int = Field(sa_type=sa.BigInteger, index=True)
    content: str
    discord_interaction_id: int | None = Field(default=None, sa_type=sa.BigInteger, unique=True)
    created_at: datetime = Field(default_factory=utcnow)


class AdapterVersion(SQLModel, table=True):
    """One LoRA adapter: its lineage, where it lives, how it was trained and scored, and its status."""

    __table_args__ = (
        # The database itself forbids two active versions in one scope.
        sa.Index(
            "uq_adapterversion_active_scope",
            "scope",
            unique=True,
            sqlite_where=sa.text("status = 'active'"),
            postgresql_where=sa.text("status = 'active'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    scope: str = "global"
    parent: str | None = None
    # base_model, method and path are filled in by register_adapter; a reserved name has none yet.
    base_model: str | None = None
    method: Method | None = Field(default=None, sa_type=sa.String)
    path: str | None = None
    dataset_counts: dict[str, int] = Field(default_factory=dict, sa_type=sa.JSON)
    metrics: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    status: AdapterStatus = Field(default="training", sa_type=sa.String)
    status_reason: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    activated_at: datetime | None = None


class TrainingRun(SQLModel, table=True):
    """One request to train, and its progress: the bot and the trainer talk through these rows."""

    __table_args__ = (sa.Index("ix_trainingrun_scope_status", "scope", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    scope: str = "global"
    requested_by: int | None = Field(default=None, sa_type=sa.BigInteger)
    reason: RunReason = Field(sa_type=sa.String)
    status: RunStatus = Field(default="queued", sa_type=sa.String)
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    heartbeat_at: datetime | None = None
    error: str | None = None
    adapter_version: str | None = None
    # Where the bot posts, then edits, its progress message.
    notify_channel_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    notify_message_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    notified_at: datetime | None = None  # when the bot posted the result (or gave up on posting it)


class UserPrefs(SQLModel, table=True):
    """A person's choices about their data."""

    user_id: int = Field(sa_type=sa.BigInteger, primary_key=True, sa_column_kwargs={"autoincrement": False})
    opted_out: bool = False
    opted_out_at: datetime | None = None
    forgotten_at: datetime | None = None


class Community(SQLModel, table=True):
    """A server's choice about its data: whether its feedback also teaches the shared (global) adapter.

    A server without a row does not share: sharing is opt-in, set by its admins with /share-data.
    """

    scope: str = Field(primary_key=True)  # "guild:<id>"
    share_data: bool = False
    updated_by: int | None = Field(default=None, sa_type=sa.BigInteger)  # the admin who last set it
    updated_at: datetime = Field(default_factory=utcnow)


class PromptSide(SQLModel, table=True):
    """Which side of the train / hold-out split a prompt is on, recorded when the trainer first sees it.

    Recorded once, never changed: a prompt held out stays held out however clusters are later drawn, so no
    ancestor adapter ever trained on a prompt a later gate judges with. The prompt's normalized text is kept
    only as a hash and as hashes of its character 5-grams (what near-duplicate matching needs).
    """

    key_hash: str = Field(primary_key=True)  # sha256 of the normalized prompt
    held_out: bool
    shingles: list[int] = Field(default_factory=list, sa_type=sa.JSON)  # 64-bit hashes of its 5-grams
    created_at: datetime = Field(default_factory=utcnow)


class ServiceBeat(SQLModel, table=True):
    """The last sign of life of a long-running service (the trainer), for /doctor and `gradschool status`."""

    name: str = Field(primary_key=True)  # "trainer"
    beat_at: datetime = Field(default_factory=utcnow)
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)  # what it is configured to do


class Instructions(SQLModel, table=True):
    """One version of a server's (or one of its channels') own instructions to the model; the newest counts.

    Versions are never changed or deleted, so a Generation's `instructions_version` always says what the
    model was told; clearing adds a version with empty text.
    """

    __table_args__ = (sa.UniqueConstraint("scope", "channel_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    scope: str
    channel_id: int = Field(default=0, sa_type=sa.BigInteger)  # 0: the whole server
    version: int
    text: str  # "" when cleared
    set_by: int | None = Field(default=None, sa_type=sa.BigInteger)
    created_at: datetime = Field(default_factory=utcnow)


class ChannelMode(SQLModel, table=True):
    """A channel's own switches: in listen mode the bot answers every message there, not only mentions."""

    channel_id: int = Field(
        sa_type=sa.BigInteger, primary_key=True, sa_column_kwargs={"autoincrement": False}
    )
    scope: str
    listen: bool = False
    updated_by: int | None = Field(default=None, sa_type=sa.BigInteger)
    updated_at: datetime = Field(default_factory=utcnow)


class Passage(SQLModel, table=True):
    """One passage of a community's open book: text the model is shown, never told to obey.

    Full-text indexed by the database itself: an FTS5 table kept in step by triggers on SQLite, a GIN index
    on the text's tsvector on Postgres (both made by the migration, see `store.knowledge`).
    """

    __table_args__ = (sa.UniqueConstraint("scope", "discord_message_id"),)

    id: int | None = Field(default=None, primary_key=True)
    scope: str = Field(index=True)
    source: PassageSource = Field(sa_type=sa.String)
    title: str  # what the sources footer names: a file, "pinned in #rules", "correction by Ana"
    text: str
    status: PassageStatus = Field(default="accepted", sa_type=sa.String)  # pending: waits for an admin
    author_id: int | None = Field(default=None, sa_type=sa.BigInteger, index=True)  # whose words these are
    added_by: int | None = Field(default=None, sa_type=sa.BigInteger)
    correction_id: int | None = Field(default=None, foreign_key="correction.id")
    discord_message_id: int | None = Field(default=None, sa_type=sa.BigInteger)  # a pinned message's id
    created_at: datetime = Field(default_factory=utcnow)
    decided_by: int | None = Field(default=None, sa_type=sa.BigInteger)  # the admin who accepted it


class PassageVector(SQLModel, table=True):
    """A passage's sentence embedding, for the open book's hybrid ranking (`store.knowledge.search`).

    Made by the embedding model named in `model` (the store never runs one: the caller embeds, see
    `engine.embedding`), stored as little-endian float32 of unit length. It goes with its passage.
    """

    passage_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("passage.id", ondelete="CASCADE"), primary_key=True)
    )
    model: str = Field(primary_key=True)
    vector: bytes = Field(sa_type=sa.LargeBinary)
