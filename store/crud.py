"""Reading and writing conversations, votes and people's data choices (training runs: `store.runs`).

Convention: every function takes the caller's `session` first, then keyword-only arguments, and a function
that writes commits before it returns: its body runs in `write_transaction`, which first commits anything the
caller left pending and rolls back on an exception, so each call is its own transaction. Rows come back
refreshed, so they stay usable after the session closes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, delete, func, or_, select, update
from sqlmodel.sql.expression import SelectOfScalar

from store import communities, knowledge
from store.db import get_for_update, loaded, write_transaction
from store.models import (
    DOWNVOTE_REASONS,
    ROLES,
    AdapterVersion,
    Correction,
    Feedback,
    Generation,
    Message,
    Role,
    TrainingRun,
    UserPrefs,
    utcnow,
)

Row = TypeVar("Row", bound=SQLModel)
MAX_REASON_TEXT = 1000  # characters of a 👎 reason in the voter's own words


def _insert_once(session: Session, row: Row, existing: SelectOfScalar[Row]) -> Row:
    """Insert `row` unless `existing` finds it already; a concurrent insert of the same key loses cleanly."""
    found = session.exec(existing).first()
    if found is not None:
        return found
    try:
        with session.begin_nested():  # a SAVEPOINT, so losing the race keeps the outer transaction usable
            session.add(row)
    except IntegrityError:
        found = session.exec(existing).first()
        if found is None:
            raise  # not a duplicate: a missing foreign key or a failed check
        return found
    return row


def record_message(
    *,
    session: Session,
    role: Role,
    content: str,
    discord_id: int | None = None,
    guild_id: int | None = None,
    channel_id: int | None = None,
    author_id: int | None = None,
    author_name: str = "",
    reply_to: int | None = None,
    generation_id: int | None = None,
    created_at: datetime | None = None,
) -> Message:
    """Record a message; the same `discord_id` twice returns the first row unchanged."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    message = Message(
        discord_id=discord_id,
        guild_id=guild_id,
        channel_id=channel_id,
        author_id=author_id,
        author_name=author_name,
        role=role,
        content=content,
        reply_to=reply_to,
        generation_id=generation_id,
        created_at=created_at or utcnow(),
    )
    with write_transaction(session):
        message = _message_row(session, message)
    return loaded(session, message)


def _message_row(session: Session, message: Message) -> Message:
    if message.discord_id is None:  # CLI messages have no Discord id, so nothing to be idempotent on
        session.add(message)
        session.flush()
        return message
    return _insert_once(session, message, select(Message).where(Message.discord_id == message.discord_id))


def record_generation(
    *,
    session: Session,
    prompt: list[dict[str, Any]],
    completion: str,
    scope: str = "global",
    request_message_id: int | None = None,
    user_id: int | None = None,
    guild_id: int | None = None,
    channel_id: int | None = None,
    adapter_version: str | None = None,
    sampling: dict[str, Any] | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    latency_ms: float = 0.0,
    regenerates: int | None = None,
    error: str | None = None,
    instructions_version: str | None = None,
    passage_ids: list[int] | None = None,
) -> Generation:
    """Record one reply of the model with the exact prompt it was given (`error`: it failed mid-answer), and
    the lower rungs in play (the instructions' versions, the passages shown)."""
    generation = Generation(
        scope=scope,
        request_message_id=request_message_id,
        user_id=user_id,
        guild_id=guild_id,
        channel_id=channel_id,
        prompt=prompt,
        completion=completion,
        adapter_version=adapter_version,
        sampling=sampling or {},
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        latency_ms=latency_ms,
        regenerates=regenerates,
        error=error,
        instructions_version=instructions_version,
        passage_ids=passage_ids or [],
    )
    with write_transaction(session):
        session.add(generation)
    return loaded(session, generation)


def attach_discord_messages(
    *,
    session: Session,
    generation_id: int,
    discord_ids: Sequence[int],
    contents: Sequence[str],
    author_id: int | None = None,
    author_name: str = "",
) -> Generation:
    """Record the bot's messages a generation was sent as (a long answer is several) and link them to it."""
    if len(discord_ids) != len(contents):
        raise ValueError(f"{len(discord_ids)} discord ids but {len(contents)} contents")
    with write_transaction(session):
        generation = get_for_update(session, Generation, generation_id)
        for discord_id, content in zip(discord_ids, contents, strict=True):
            message = _message_row(
                session,
                Message(
                    discord_id=discord_id,
                    guild_id=generation.guild_id,
                    channel_id=generation.channel_id,
                    author_id=author_id,
                    author_name=author_name,
                    role="assistant",
                    content=content,
                    generation_id=generation_id,
                ),
            )
            if message.generation_id is None:  # recorded by the message listener before it was linked
                message.generation_id = generation_id
        known = list(generation.discord_message_ids)
        # A new list, not an in-place append: JSON columns only notice reassignment.
        generation.discord_message_ids = known + [i for i in discord_ids if i not in known]
    return loaded(session, generation)


def generation_for_discord_message(*, session: Session, discord_id: int) -> Generation | None:
    """The generation a bot message (any part of a split answer) belongs to; None for other messages."""
    statement = (
        select(Generation)
        .join(Message, col(Message.generation_id) == col(Generation.id))
        .where(Message.discord_id == discord_id)
    )
    return session.exec(statement).first()


def record_feedback(*, session: Session, generation_id: int, rater_id: int, value: int) -> Feedback:
    """Make `value` (+1 or -1) the rater's live vote on a generation: new, changed, revived or unchanged."""
    if value not in (1, -1):
        raise ValueError(f"a vote is +1 or -1, got {value!r}")
    with write_transaction(session):
        vote = _insert_once(
            session,
            Feedback(generation_id=generation_id, rater_id=rater_id, value=value),
            select(Feedback).where(Feedback.generation_id == generation_id, Feedback.rater_id == rater_id),
        )
        if vote.value != value or vote.removed_at is not None:
            vote.value, vote.removed_at, vote.updated_at = value, None, utcnow()
            vote.reason = vote.reason_text = None  # a reason belongs to the 👎 it was given for
    return loaded(session, vote)


def set_downvote_reason(
    *, session: Session, generation_id: int, rater_id: int, reason: str, text: str | None = None
) -> Feedback | None:
    """Say why the rater's live 👎 on a generation: `reason` one of DOWNVOTE_REASONS, `text` their words
    (kept to MAX_REASON_TEXT characters). None when they have no live 👎 there any more."""
    if reason not in DOWNVOTE_REASONS:
        raise ValueError(f"a reason is one of {DOWNVOTE_REASONS}, got {reason!r}")
    with write_transaction(session):
        vote = session.exec(
            select(Feedback).where(
                Feedback.generation_id == generation_id,
                Feedback.rater_id == rater_id,
                Feedback.value == -1,
                col(Feedback.removed_at).is_(None),
            )
        ).first()
        if vote is None:
            return None
        vote.reason = reason
        vote.reason_text = (text or "").strip()[:MAX_REASON_TEXT] or None
        vote.updated_at = utcnow()
    return loaded(session, vote)


def downvote_reasons(*, session: Session, scope: str = "global") -> dict[str, int]:
    """Live 👎 votes per reason given (those without one are not counted), most given first."""
    statement = (
        select(Feedback.reason, func.count())
        .join(Generation, col(Generation.id) == col(Feedback.generation_id))
        .where(
            Generation.scope == scope,
            Feedback.value == -1,
            col(Feedback.removed_at).is_(None),
            col(Feedback.reason).is_not(None),
        )
        .group_by(col(Feedback.reason))
    )
    counts = {str(reason): count for reason, count in session.exec(statement)}
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def retract_feedback(
    *, session: Session, generation_id: int, rater_id: int, value: int | None = None
) -> Feedback | None:
    """Retract a live vote; with `value`, only a vote of that value (un-👍 after switching to 👎 keeps 👎)."""
    with write_transaction(session):
        vote = session.exec(
            select(Feedback).where(
                Feedback.generation_id == generation_id,
                Feedback.rater_id == rater_id,
                col(Feedback.removed_at).is_(None),
            )
        ).first()
        if vote is None or (value is not None and vote.value != value):
            return None
        vote.removed_at = vote.updated_at = utcnow()
    return loaded(session, vote)


def retract_all_feedback(*, session: Session, generation_id: int, value: int | None = None) -> int:
    """Retract every live vote on a generation (with `value`, only those of it); how many were retracted.

    A moderator clearing a message's reactions (all, or one emoji) takes the votes they were with them.
    """
    with write_transaction(session):
        statement = select(Feedback).where(
            Feedback.generation_id == generation_id, col(Feedback.removed_at).is_(None)
        )
        if value is not None:
            statement = statement.where(Feedback.value == value)
        votes = list(session.exec(statement))
        now = utcnow()
        for vote in votes:
            vote.removed_at = vote.updated_at = now
    return len(votes)


def record_correction(
    *,
    session: Session,
    generation_id: int,
    author_id: int,
    content: str,
    discord_interaction_id: int | None = None,
) -> Correction:
    """Record a better answer someone wrote; the same interaction id twice returns the first row."""
    correction = Correction(
        generation_id=generation_id,
        author_id=author_id,
        content=content,
        discord_interaction_id=discord_interaction_id,
    )
    with write_transaction(session):
        if discord_interaction_id is None:
            session.add(correction)
        else:
            correction = _insert_once(
                session,
                correction,
                select(Correction).where(Correction.discord_interaction_id == discord_interaction_id),
            )
    return loaded(session, correction)


def set_opt_out(*, session: Session, user_id: int, opted_out: bool) -> UserPrefs:
    """Opt a person out of training (or back in)."""
    with write_transaction(session):
        prefs = _prefs(session, user_id)
        if prefs.opted_out != opted_out:
            prefs.opted_out, prefs.opted_out_at = opted_out, utcnow() if opted_out else None
        if opted_out:  # their corrections stop being knowledge too, not only training data
            knowledge.remove_authored(session=session, user_id=user_id, corrections_only=True)
    return loaded(session, prefs)


def _prefs(session: Session, user_id: int) -> UserPrefs:
    return _insert_once(
        session, UserPrefs(user_id=user_id), select(UserPrefs).where(UserPrefs.user_id == user_id)
    )


def forget_user(*, session: Session, user_id: int) -> dict[str, int]:
    """Delete a person's messages, the generations they asked for, their votes and corrections; opt them out.

    Generations whose prompt quotes them (a reply chain or thread with their words in it) go too, with the
    votes and corrections on them: their words must not outlive them there. Returns how many rows went.
    """
    with write_transaction(session):
        their_messages = select(Message.id).where(Message.author_id == user_id)
        asked = list(
            session.exec(
                select(Generation.id).where(
                    or_(Generation.user_id == user_id, col(Generation.request_message_id).in_(their_messages))
                )
            )
        )
        asked += _quoting_generations(session, user_id, exclude=set(asked))
        doomed = list(
            session.exec(
                select(Message.id).where(
                    or_(Message.author_id == user_id, col(Message.generation_id).in_(asked))
                )
            )
        )
        # Unlink the rows that stay from the rows that go, then delete children first (foreign keys are on).
        session.exec(
            update(Generation).where(col(Generation.regenerates).in_(asked)).values(regenerates=None)
        )
        session.exec(
            update(Generation)
            .where(col(Generation.request_message_id).in_(doomed))
            .values(request_message_id=None)
        )
        votes = session.exec(
            delete(Feedback).where(or_(Feedback.rater_id == user_id, col(Feedback.generation_id).in_(asked)))
        )
        doomed_corrections = session.exec(
            select(Correction.id).where(
                or_(Correction.author_id == user_id, col(Correction.generation_id).in_(asked))
            )
        )
        passages = knowledge.remove_authored(session=session, user_id=user_id)
        passages += knowledge.passages_of_corrections(
            session=session, correction_ids=list(doomed_corrections)
        )
        corrections = session.exec(
            delete(Correction).where(
                or_(Correction.author_id == user_id, col(Correction.generation_id).in_(asked))
            )
        )
        messages = session.exec(delete(Message).where(col(Message.id).in_(doomed)))
        generations = session.exec(delete(Generation).where(col(Generation.id).in_(asked)))
        prefs = _prefs(session, user_id)
        prefs.forgotten_at = utcnow()
        if not prefs.opted_out:  # forgetting someone, then training on their next message, would be wrong
            prefs.opted_out, prefs.opted_out_at = True, prefs.forgotten_at
    return {
        "messages": messages.rowcount,
        "generations": generations.rowcount,
        "votes": votes.rowcount,
        "corrections": corrections.rowcount,
        "passages": passages,
    }


def _quoting_generations(session: Session, user_id: int, *, exclude: set[int | None]) -> list[int]:
    """Other generations whose prompt quotes the person (a prompt holds its own channel's messages only)."""
    theirs = session.exec(select(Message).where(Message.author_id == user_id)).all()
    texts, channels = quoted_forms(theirs), {m.channel_id for m in theirs if m.channel_id is not None}
    nearby = session.exec(select(Generation).where(col(Generation.channel_id).in_(channels)))
    return [g.id for g in nearby if g.id is not None and g.id not in exclude and quotes(g.prompt, texts)]


def quoted_forms(messages: Sequence[Message]) -> set[str]:
    """How these messages may appear as a prompt's user turn: as the asker's own, or as "name: text"."""
    return {form for m in messages if m.content for form in (m.content, f"{m.author_name}: {m.content}")}


def quotes(prompt: Sequence[dict[str, Any]], texts: set[str]) -> bool:
    """Whether a prompt holds one of `texts` (from `quoted_forms`) as a user turn, under any name."""
    for message in prompt:
        content = str(message.get("content", ""))
        # the bot prefixes other people's turns with their name, which may have changed since
        if message.get("role") == "user" and (content in texts or content.partition(": ")[2] in texts):
            return True
    return False


def is_excluded(*, session: Session, user_id: int) -> bool:
    """Whether a person's data must stay out of training (opted out, which forgetting implies)."""
    prefs = session.get(UserPrefs, user_id)
    return prefs is not None and prefs.opted_out


def excluded_user_ids(*, session: Session) -> set[int]:
    """Everyone whose data must stay out of training."""
    return set(session.exec(select(UserPrefs.user_id).where(col(UserPrefs.opted_out).is_(True))))


def count_votes_since(*, session: Session, since: datetime | None, scope: str = "global") -> int:
    """Live votes cast or changed after `since` (all live votes when None) on the rows that teach the
    scope's adapter (`communities.training_scopes`: for the global one, the shared pool), for the retrain
    threshold."""
    pool = communities.training_scopes(session=session, scope=scope)
    statement = (
        select(func.count())
        .select_from(Feedback)
        .join(Generation, col(Generation.id) == col(Feedback.generation_id))
        .where(col(Generation.scope).in_(pool), col(Feedback.removed_at).is_(None))
    )
    if since is not None:
        statement = statement.where(Feedback.updated_at > since)
    return session.exec(statement).one()


def store_counts(*, session: Session) -> dict[str, int]:
    """How many rows of each kind the store holds (votes: live ones only)."""

    def count(model: type[SQLModel], *where: Any) -> int:
        return session.exec(select(func.count()).select_from(model).where(*where)).one()

    return {
        "messages": count(Message),
        "generations": count(Generation),
        "votes": count(Feedback, col(Feedback.removed_at).is_(None)),
        "corrections": count(Correction),
        "runs": count(TrainingRun),
        "adapters": count(AdapterVersion),
    }


def votes_by_adapter(
    *, session: Session, scope: str = "global", since: datetime | None = None
) -> dict[str | None, tuple[int, int]]:
    """Live (👍, 👎) counts per adapter version that wrote the answers (None: the base model).

    With `since`, only votes on answers written from then on (a canary's share of traffic).
    """
    statement = (
        select(Generation.adapter_version, Feedback.value, func.count())
        .join(Feedback, col(Feedback.generation_id) == col(Generation.id))
        .where(Generation.scope == scope, col(Feedback.removed_at).is_(None))
        .group_by(col(Generation.adapter_version), col(Feedback.value))
    )
    if since is not None:
        statement = statement.where(col(Generation.created_at) >= since)
    counts: dict[str | None, tuple[int, int]] = {}
    for adapter, value, count in session.exec(statement):
        up, down = counts.get(adapter, (0, 0))
        counts[adapter] = (up + count, down) if value == 1 else (up, down + count)
    return counts


def daily_votes_by_adapter(
    *, session: Session, scope: str = "global"
) -> list[tuple[datetime, str | None, int, int]]:
    """Live votes per UTC day cast and adapter version: (day at midnight, adapter, 👍, 👎), oldest first."""
    statement = (
        select(Feedback.created_at, Generation.adapter_version, Feedback.value)
        .join(Generation, col(Generation.id) == col(Feedback.generation_id))
        .where(Generation.scope == scope, col(Feedback.removed_at).is_(None))
    )
    days: dict[tuple[datetime, str | None], list[int]] = {}
    for created_at, adapter, value in session.exec(statement):  # grouped here: date functions differ by SQL
        day = created_at.replace(hour=0, minute=0, second=0, microsecond=0)
        counts = days.setdefault((day, adapter), [0, 0])
        counts[0 if value == 1 else 1] += 1
    return [(day, adapter, up, down) for (day, adapter), (up, down) in sorted(days.items(), key=_day_key)]


def _day_key(item: tuple[tuple[datetime, str | None], list[int]]) -> tuple[datetime, str]:
    (day, adapter), _ = item
    return day, adapter or ""
