"""A load's record and what Discord showed, held against the store: every answer, message and vote once.

- every request (mention, reply, 🔁) got exactly one reply from the bot: a finished answer, or a notice saying
  it is busy or rate-limited; silence only right after the bot already said "try again in N s" to that person;
- every answered question is one Message row, and its answer one Generation linked to it (a 🔁's answer to
  the generation it replaces); no Generation in the load's channels that nobody saw, no unknown people's rows;
- the live Feedback rows are exactly the 👍/👎 people have on the answers now (one per rater and answer);
- the last /optout or /optin of each person is what the store holds; every slash command was answered;
- every event the emulator queued for the bot was written to its socket.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine as Database
from sqlmodel import Session, col, select

from sim.discord_emulator import DiscordEmulator
from sim.discord_emulator import Message as DiscordMessage
from sim.load import DOWN, REGENERATE, UP, Ask, LoadDriver, LoadRecord, notice_outcome, notice_wait_s
from store.models import Feedback, Generation, Message, UserPrefs


@dataclass(frozen=True)
class Reply:
    """A bot message replying to a request, as Discord shows it now."""

    message_id: int
    content: str
    created_at: datetime
    finished_at: datetime | None  # when the bot put its 🔁 under it: a complete, recorded answer


@dataclass
class DiscordView:
    """What the emulator shows after the load, copied off its loop."""

    replies: dict[int, list[Reply]]  # request (question, or answer under a 🔁) -> the bot's replies to it
    reactions: dict[tuple[int, int], set[str]]  # (user, answer) -> the user's 👍/👎 there now
    answered_commands: set[int]  # interactions with a finished response
    people_messages: set[int]  # every message the load's people posted
    undelivered: int  # events queued for the bot but never written to its socket
    emulator_objects: dict[str, int]  # what the emulator itself holds (it shares the process)


async def look(driver: LoadDriver) -> DiscordView:
    """What Discord shows now; run it on the emulator's loop, after the load."""
    driver.index_new_messages()
    emulator, record, bot_id = driver.emulator, driver.record, driver.bot_id
    world, gateway = emulator.world, emulator.gateway
    replies = {  # a 👎's reason offer (buttons) replies to the answer too, but it is no answer to the 🔁
        ask.message_id: [
            _reply(m, bot_id) for m in driver.replies.get(ask.message_id, []) if not m.components
        ]
        for ask in record.asks
    }
    reactions: dict[tuple[int, int], set[str]] = {}
    for answer in record.answers:
        for emoji in (UP, DOWN):
            for user in world.messages[answer].reactors(emoji):
                if user != bot_id:
                    reactions.setdefault((user, answer), set()).add(emoji)
    answered = {
        c.interaction_id
        for c in record.commands
        if (shown := emulator.interaction_messages(world.interactions[c.interaction_id]))
        and not shown[0].loading
    }
    people = set(record.population.user_ids)
    return DiscordView(
        replies=replies,
        reactions=reactions,
        answered_commands=answered,
        people_messages={m.id for m in world.messages.values() if m.author_id in people},
        undelivered=sum(1 for d in gateway.dispatches if not d.delivered),
        emulator_objects={
            "messages": len(world.messages),
            "dispatches": len(gateway.dispatches),
            "rest_calls": len(emulator.rest_calls),
        },
    )


def _reply(message: DiscordMessage, bot_id: int) -> Reply:
    finished = next(
        (e.at for e in message.reaction_log if e.user_id == bot_id and e.emoji == REGENERATE and e.added),
        None,
    )
    return Reply(message.id, message.content, message.created_at, finished)


@dataclass
class LoadReport:
    """Counts, latencies and the list of broken promises (empty when the store matches Discord)."""

    counts: dict[str, int] = field(default_factory=dict)
    latency_s: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"counts": self.counts, "latency_s": self.latency_s, "problems": self.problems[:50]}


@dataclass
class _Store:
    """The rows the audit needs, read in one session."""

    messages: dict[int, Message]  # by discord id
    generations: dict[int, Generation]  # those in the load's channels, by id
    live_votes: dict[tuple[int, int], int]  # (rater, generation) -> value, for the load's people
    opted_out: dict[int, bool]
    duplicated: list[int]  # discord ids with more than one Message row (the unique key should forbid it)


def read_store(database: Database, record: LoadRecord) -> _Store:
    """Every row of the load's channels and people."""
    people, channels = record.population.user_ids, record.population.channel_ids
    with Session(database) as session:
        messages = session.exec(select(Message).where(col(Message.channel_id).in_(channels))).all()
        generations = session.exec(select(Generation).where(col(Generation.channel_id).in_(channels))).all()
        votes = session.exec(select(Feedback).where(col(Feedback.rater_id).in_(people))).all()
        prefs = session.exec(select(UserPrefs).where(col(UserPrefs.user_id).in_(people))).all()
    ids = Counter(m.discord_id for m in messages if m.discord_id is not None)
    return _Store(
        messages={m.discord_id: m for m in messages if m.discord_id is not None},
        generations={g.id: g for g in generations if g.id is not None},
        live_votes={(f.rater_id, f.generation_id): f.value for f in votes if f.removed_at is None},
        opted_out={p.user_id: p.opted_out for p in prefs},
        duplicated=[discord_id for discord_id, rows in ids.items() if rows > 1],
    )


def audit(record: LoadRecord, view: DiscordView, database: Database) -> LoadReport:
    """Compare; `problems` lists every difference."""
    store = read_store(database, record)
    report = LoadReport()
    shown = _check_requests(record, view, store, report)
    _check_generations(store, shown, report)
    _check_votes(record, view, store, report)
    _check_people(record, view, store, report)
    return report


def _outcome(reply: Reply) -> str:
    return notice_outcome(reply.content) or ("answer" if reply.finished_at is not None else "unfinished")


def _check_requests(record: LoadRecord, view: DiscordView, store: _Store, report: LoadReport) -> set[int]:
    """Each request's reply, and each answer's rows; returns the generations the answers were recorded as."""
    counts: Counter[str] = Counter()
    shown: set[int] = set()
    first: list[float] = []
    finished: list[float] = []
    told_to_wait = [  # (person, when the bot said "try again in N s", N)
        (ask.user_id, replies[0].created_at, notice_wait_s(replies[0].content))
        for ask in record.asks
        if (replies := view.replies.get(ask.message_id)) and _outcome(replies[0]) == "rate_limited"
    ]
    for ask in record.asks:
        counts[f"{ask.kind}_sent"] += 1
        replies = view.replies.get(ask.message_id, [])
        if ask.kind != "regenerate":
            if ask.message_id in store.messages:
                counts[f"{ask.kind}_recorded"] += 1
            else:  # refused ones too: every message that reached the bot is recorded
                report.problems.append(f"{ask.kind} {ask.message_id} reached the bot but is not recorded")
        if len(replies) > 1:
            report.problems.append(f"{ask.kind} {ask.message_id} got {len(replies)} replies")
        if not replies:
            covered = any(
                user == ask.user_id
                and said - timedelta(seconds=1) <= ask.sent_at <= said + timedelta(seconds=wait + 1)
                for user, said, wait in told_to_wait
            )
            counts[f"{ask.kind}_silent_after_rate_notice" if covered else f"{ask.kind}_silent"] += 1
            if not covered:
                report.problems.append(f"{ask.kind} {ask.message_id} by {ask.user_id} got no reply")
            continue
        reply = replies[0]
        outcome = _outcome(reply)
        counts[f"{ask.kind}_{outcome}"] += 1
        if outcome in ("failed", "unfinished"):
            report.problems.append(f"{ask.kind} {ask.message_id} got {outcome}: {reply.content[:80]!r}")
        if outcome != "answer" or reply.finished_at is None:
            continue
        first.append((reply.created_at - ask.sent_at).total_seconds())
        finished.append((reply.finished_at - ask.sent_at).total_seconds())
        generation = _check_answer(ask, reply, store, report)
        if generation is not None:
            shown.add(generation)
    report.counts.update(sorted(counts.items()))
    report.latency_s = _percentiles("first_reply", first) | _percentiles("answered", finished)
    return shown


def _check_answer(ask: Ask, reply: Reply, store: _Store, report: LoadReport) -> int | None:
    """The answer's Generation, linked to its question's Message row (or, for 🔁, to the one it replaces)."""
    generation = _generation_of(store, reply.message_id)
    if generation is None or generation.id is None:
        report.problems.append(f"answer {reply.message_id} has no Generation")
        return None
    if ask.kind == "regenerate":
        original = _generation_of(store, ask.message_id)
        if original is None or generation.regenerates != original.id:
            report.problems.append(f"🔁 answer {reply.message_id} is not linked to the answer it replaces")
        return generation.id
    question = store.messages.get(ask.message_id)
    if question is None:
        report.problems.append(f"answered question {ask.message_id} has no Message row")
    elif generation.request_message_id != question.id or generation.regenerates is not None:
        report.problems.append(f"answer {reply.message_id} is not linked to question {ask.message_id}")
    return generation.id


def _generation_of(store: _Store, discord_id: int) -> Generation | None:
    row = store.messages.get(discord_id)
    if row is None or row.generation_id is None:
        return None
    return store.generations.get(row.generation_id)


def _check_generations(store: _Store, shown: set[int], report: LoadReport) -> None:
    """Every Generation in the load's channels is an answer somebody was shown, each exactly once."""
    unseen = sorted(set(store.generations) - shown)
    report.counts["generations"] = len(store.generations)
    if unseen:
        report.problems.append(f"{len(unseen)} Generations no request was answered with: {unseen[:10]}")


def _check_votes(record: LoadRecord, view: DiscordView, store: _Store, report: LoadReport) -> None:
    """The live votes in the store are exactly the 👍/👎 on the answers now."""
    expected: dict[tuple[int, int], int] = {}
    for (user, answer), emojis in view.reactions.items():
        generation = _generation_of(store, answer)
        if len(emojis) != 1 or generation is None or generation.id is None:
            report.problems.append(
                f"answer {answer}: {user} holds {sorted(emojis)} (generation {generation})"
            )
            continue
        expected[(user, generation.id)] = 1 if emojis == {UP} else -1
    intended = {(u, a): v for (u, a), v in record.votes.items() if v}
    held = {(u, a): 1 if e == {UP} else -1 for (u, a), e in view.reactions.items() if e in ({UP}, {DOWN})}
    if intended != held:
        differ = sorted(set(intended.items()) ^ set(held.items()))[:5]
        report.problems.append(f"the people's own votes differ from the reactions on Discord: {differ}")
    missing = {k: v for k, v in expected.items() if store.live_votes.get(k) != v}
    extra = {k: v for k, v in store.live_votes.items() if k not in expected}
    report.counts |= {
        "votes_added": record.votes_added,
        "votes_removed": record.votes_removed,
        "votes_live_on_discord": len(expected),
        "votes_live_in_store": len(store.live_votes),
    }
    if missing:
        report.problems.append(
            f"{len(missing)} votes on Discord are not live in the store: {list(missing)[:5]}"
        )
    if extra:
        report.problems.append(f"{len(extra)} live votes in the store are not on Discord: {list(extra)[:5]}")


def _check_people(record: LoadRecord, view: DiscordView, store: _Store, report: LoadReport) -> None:
    """No unknown rows; opt-outs as last asked; every command answered; every event delivered."""
    people = set(record.population.user_ids)
    unknown = [
        d for d, m in store.messages.items() if m.author_id in people and d not in view.people_messages
    ]
    if unknown:
        report.problems.append(f"{len(unknown)} Message rows of messages nobody sent: {unknown[:5]}")
    if store.duplicated:
        report.problems.append(f"messages recorded more than once: {store.duplicated[:5]}")
    wrong = [u for u, out in record.opted_out.items() if store.opted_out.get(u, False) != out]
    if wrong:
        report.problems.append(
            f"{len(wrong)} people's opt-out is not their last /optout or /optin: {wrong[:5]}"
        )
    unanswered = [c for c in record.commands if c.interaction_id not in view.answered_commands]
    if unanswered:
        names = Counter(f"/{c.name}" for c in unanswered)
        report.problems.append(f"{len(unanswered)} slash commands got no response: {dict(names)}")
    if view.undelivered:
        report.problems.append(f"{view.undelivered} events were never written to the bot's socket")
    report.counts |= {
        "messages_recorded": sum(1 for m in store.messages.values() if m.author_id in people),
        "commands": len(record.commands),
        "commands_answered": len(record.commands) - len(unanswered),
        "undelivered_events": view.undelivered,
    }


def _percentiles(name: str, values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        f"{name}_p50": round(statistics.median(ordered), 3),
        f"{name}_p99": round(ordered[int(0.99 * (len(ordered) - 1))], 3),
        f"{name}_max": round(ordered[-1], 3),
    }


async def settled_audit(
    driver: LoadDriver, emulator: DiscordEmulator, database: Database, *, timeout_s: float = 30.0
) -> LoadReport:
    """Audit until the store has caught up with Discord (the last writes may be in flight) or time is up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        view = await asyncio.to_thread(emulator.call, look(driver))
        report = await asyncio.to_thread(audit, driver.record, view, database)
        if not report.problems or loop.time() >= deadline:
            report.counts |= {f"emulator_{k}": v for k, v in view.emulator_objects.items()}
            return report
        await asyncio.sleep(0.5)
