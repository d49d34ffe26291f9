"""What must be true after a hostile case (its expected outcome) and after a whole category (invariants)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import col, select

from bot.client import GradschoolBot
from bot.splitting import DISCORD_LIMIT, open_fence, split_message
from sim.discord_emulator import Message, User
from store import crud
from store.models import AdapterVersion, Correction, Generation, TrainingRun
from store.models import Message as Row
from tests.fixtures.bot import rows
from tests.reliability.support.hostile_actions import Correct, React, Slash
from tests.reliability.support.hostile_driver import Harness
from tests.reliability.support.hostile_inputs import Case, Category, During, Post

SEEDED = {"v1": "candidate", "v2": "rejected", "v3": "training"}  # what /activate and injections aim at
REPLY_TEXT = {
    "refused": "only admins can use",
    "no such adapter": "There is no adapter",
    "cannot activate": "Can't activate",
    "stale command": "reload Discord",
    "correction recorded": "Thanks!",
    "correction declined": "An empty answer",
    "not an answer": "isn't one of my answers",
}
GENERIC_ERROR = "Sorry, that didn't work"


def case_problem(harness: Harness, case: Case) -> str | None:
    """What is wrong with the case's outcome, or None."""
    act, sent = case.act, harness.sent[case.name]
    if isinstance(act, Post | During):
        return _message_problem(harness, case, sent)
    if isinstance(act, React):
        return _vote_problem(harness, act, case.expect, sent)
    if isinstance(act, Slash):
        return _reply_problem(case.expect, sent)
    interaction, messages = sent
    return _reply_problem(case.expect, messages) or (
        _correction_problem(harness, act, case.expect, interaction.id) if isinstance(act, Correct) else None
    )


def _message_problem(harness: Harness, case: Case, question: Message) -> str | None:
    bot_messages = harness.emulator.bot_messages(question.channel_id)
    replies = [m for m in bot_messages if m.reference_id == question.id]
    answer_parts = {i for g in _all(harness, Generation) for i in g.discord_message_ids}
    notices = [m.content for m in replies if not m.reactions and m.id not in answer_parts]
    generation = harness.generation_for(question.id)
    row = rows(harness.database, lambda s: s.exec(select(Row).where(Row.discord_id == question.id)).first())
    if case.expect == "ignored":
        return f"not ignored: {len(replies)} replies, recorded: {row is not None}" if replies or row else None
    if case.expect == "answered" and generation is None:
        return f"no answer (notices: {notices})"
    if case.expect != "answered" and generation is not None:
        return f"answered, expected {case.expect}: {generation.completion[:80]!r}"
    wanted = getattr(case.act, "notice", None) or ("Ask me something" if case.expect == "blank" else None)
    if wanted and not any(wanted in notice for notice in notices):
        return f"no notice with {wanted!r}: {[n[:120] for n in notices]}"
    if case.expect == "answered" and not wanted and notices:
        return f"unexpected notices {[n[:120] for n in notices]}"
    for part in getattr(case.act, "stored_has", ()):
        if row is None or harness.fill(part) not in row.content:
            return f"the stored message lacks {part!r}: {row.content[:200] if row else None!r}"
    return None


def _vote_problem(harness: Harness, act: React, expect: str, rater: User) -> str | None:
    votes = [(v.generation_id, v.value, v.removed_at is None) for v in harness.votes_of(rater.id)]
    if expect == "no vote":
        return f"votes recorded: {votes}" if votes else None
    if expect == "no live vote":
        return f"votes {votes}, wanted none live" if len(votes) > 1 or any(v[2] for v in votes) else None
    wanted = 1 if expect == "vote +1" else -1
    message_id = harness.targets[act.target].id
    target = rows(
        harness.database, lambda s: crud.generation_for_discord_message(session=s, discord_id=message_id)
    )
    if target is None or votes != [(target.id, wanted, True)]:
        return f"votes {votes}, wanted one live {wanted:+d} on the target's generation"
    return None


def _reply_problem(expect: str, messages: list[Message]) -> str | None:
    contents = [m.content for m in messages]
    if any(GENERIC_ERROR in c for c in contents):
        return f"the generic error: {contents}"
    if expect == "replied":
        return None if contents and all(contents) else f"no reply: {contents}"
    wanted = REPLY_TEXT[expect]
    if not any(wanted in m.content and m.ephemeral for m in messages):
        return f"no ephemeral reply with {wanted!r}: {[c[:120] for c in contents]}"
    return None


def _correction_problem(harness: Harness, act: Correct, expect: str, interaction_id: int) -> str | None:
    query = select(Correction).where(Correction.discord_interaction_id == interaction_id)
    stored = [c.content for c in rows(harness.database, lambda s: list(s.exec(query)))]
    if expect == "correction declined":
        return f"a declined correction was stored: {stored}" if stored else None
    wanted = harness.fill(act.stored) if act.stored is not None else harness.fill(act.text).strip()
    return (
        None
        if stored == [wanted]
        else f"corrections stored {[c[:80] for c in stored]}, wanted {wanted[:80]!r}"
    )


def invariant_problems(
    harness: Harness, bot: GradschoolBot, caplog: pytest.LogCaptureFixture, category: Category
) -> list[str]:
    """What must hold after any amount of hostile input."""
    problems = []
    if bot.is_closed() or not any(s.connection for s in harness.emulator.gateway.live_sessions()):
        problems.append("the bot is no longer connected")
    problems += store_problems(harness)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    problems += [f"logged {r.levelname} from {r.name}: {r.getMessage()[:300]}" for r in errors]
    problems += output_problems(harness, caplog)
    if category.model == "echo":
        problems += split_problems(harness)
    problems += control_problems(harness, category)
    reacts = [case.act for case in category.cases if isinstance(case.act, React)]
    if harness.regenerations() != sum(a.regenerations for a in reacts):
        problems.append(
            f"{harness.regenerations()} 🔁 answers, wanted {sum(a.regenerations for a in reacts)}"
        )
    if len(harness.regenerate_notices()) != sum(a.notices for a in reacts):
        problems.append(f"🔁 rate-limit notices: {[m.content for m in harness.regenerate_notices()]}")
    return problems


def store_problems(harness: Harness) -> list[str]:
    """Each message that reached the bot recorded once, as sent; answers once; no training, no activation."""
    problems = []
    recorded = {m.discord_id: m.content for m in _all(harness, Row) if m.role == "user"}
    for discord_id, content in harness.expected_rows.items():
        if discord_id not in recorded:
            problems.append(f"message {discord_id} reached the bot but was not recorded")
        elif content is not None and recorded[discord_id] != content:
            problems.append(
                f"message {discord_id} stored as {recorded[discord_id][:100]!r}, not {content[:100]!r}"
            )
    if extra := set(recorded) - set(harness.expected_rows):
        problems.append(f"recorded messages that never reached the bot: {sorted(extra)}")
    discord_ids = {m.id: m.discord_id for m in _all(harness, Row)}
    answers = [
        discord_ids.get(g.request_message_id) for g in _all(harness, Generation) if g.regenerates is None
    ]
    for discord_id in harness.expected_rows:
        wanted = 1 if discord_id in harness.answered else 0
        if answers.count(discord_id) != wanted:
            problems.append(f"message {discord_id} has {answers.count(discord_id)} answers, wanted {wanted}")
    if training := _all(harness, TrainingRun):
        problems.append(f"training runs were queued: {training}")
    if (versions := {v.name: v.status for v in _all(harness, AdapterVersion)}) != SEEDED:
        problems.append(f"adapter versions changed: {versions}")
    with harness.database.connect() as connection:
        integrity = connection.execute(text("PRAGMA integrity_check")).scalars().all()
        foreign = connection.execute(text("PRAGMA foreign_key_check")).all()
    if integrity != ["ok"] or foreign:
        problems.append(f"the database is damaged: {integrity} {foreign}")
    return problems


def output_problems(harness: Harness, caplog: pytest.LogCaptureFixture) -> list[str]:
    """No ping of anyone in anything the bot sent, and the configured token nowhere."""
    emulator, token = harness.emulator, harness.emulator.token
    problems = []
    for message in emulator.world.messages.values():
        if message.author_id != emulator.bot_user.id:
            continue
        if message.mention_ids or message.mention_everyone or message.mention_role_ids:
            problems.append(f"bot message {message.id} pinged: {message.content[:100]!r}")
        if any(token in revision.content for revision in message.revisions):
            problems.append(f"bot message {message.id} shows the token")
    for call in emulator.rest_calls:
        body = call.body.get("data", call.body) if isinstance(call.body, dict) else None
        if body and "content" in body and (body.get("allowed_mentions") or {}).get("parse") != []:
            problems.append(f"{call.method} {call.route} allows mentions: {body.get('allowed_mentions')}")
        if token in json.dumps(call.body, default=str):
            problems.append(f"{call.method} {call.route} carried the token")
    if token in caplog.text:
        problems.append("the token was logged")
    return problems


def split_problems(harness: Harness) -> list[str]:
    """Answers that echo hostile markdown: shown exactly as the splitter cut them, each part valid alone."""
    problems = []
    for generation in _all(harness, Generation):
        parts = [harness.emulator.message(i).content for i in generation.discord_message_ids]
        if parts != split_message(generation.completion):
            problems.append(
                f"generation {generation.id} shown as {len(parts)} parts unlike the splitter's cut"
            )
        if any(not 0 < len(part) <= DISCORD_LIMIT for part in parts):
            problems.append(f"generation {generation.id} has parts of {[len(p) for p in parts]} characters")
        if open_fence(generation.completion) is None and any(open_fence(part) is not None for part in parts):
            problems.append(f"generation {generation.id} has a part with an unclosed fence")
    return problems


def control_problems(harness: Harness, category: Category) -> list[str]:
    """The hostile input really went over the wire: without this the checks above could pass vacuously."""
    people = [
        m for m in harness.emulator.world.messages.values() if m.author_id != harness.emulator.bot_user.id
    ]
    if category.name == "mentions" and not any(m.mention_everyone and m.mention_role_ids for m in people):
        return ["no person's message resolved @everyone and a role: the ping checks prove nothing"]
    frames = [json.dumps(d.frame()) for d in harness.emulator.dispatches if d.event == "MESSAGE_CREATE"]
    if category.name == "unicode" and not any("\\ud800" in frame for frame in frames):
        return ["no lone surrogate reached the bot as a JSON escape"]
    return []


def _all(harness: Harness, table: Any) -> list[Any]:
    return rows(harness.database, lambda s: list(s.exec(select(table).order_by(col(table.id)))))
