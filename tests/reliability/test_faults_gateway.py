"""Faults: the gateway connection drops again and again while people chat and vote; the store stays exact."""

from __future__ import annotations

import logging

from sqlmodel import select

from sim.discord_emulator import DiscordEmulator
from store.models import Feedback
from tests.fixtures.bot import generations, rows, until, user_messages
from tests.fixtures.discord import Community, answer_to


def votes(database) -> list[tuple[int, int, int, bool]]:
    """(generation, rater, value, live) for every Feedback row."""
    found = rows(database, lambda s: list(s.exec(select(Feedback))))
    return sorted((f.generation_id, f.rater_id, f.value, f.removed_at is None) for f in found)


async def test_votes_and_questions_across_repeated_drops_are_recorded_exactly_once(
    emulator: DiscordEmulator, community: Community, make_bot, database, caplog
) -> None:
    caplog.set_level(logging.WARNING)
    carol = await emulator.add_user("carol")
    await emulator.add_member(community.guild, carol)
    people = (community.alice, community.bob, carol)
    await make_bot()
    general = community.general
    questions = [await emulator.send_message(general, community.alice, "first question", mentions_bot=True)]
    answers = [await answer_to(emulator, community, questions[0])]
    expected: dict[tuple[int, int], int] = {}  # (answer message, rater) -> live vote

    for round_ in range(3):
        # away: the events queue on the emulator and come back through RESUME
        async with emulator.disconnected():
            for index, person in enumerate(people):
                emoji = "👍" if (index + round_) % 2 == 0 else "👎"
                await emulator.add_reaction(person, general, answers[-1], emoji)
                expected[(answers[-1].id, person.id)] = 1 if emoji == "👍" else -1
            if round_ > 0:  # alice changes her mind about the previous answer: 👍 -> 👎 (or back)
                old = expected[(answers[-2].id, community.alice.id)]
                await emulator.remove_reaction(
                    community.alice, general, answers[-2], "👍" if old > 0 else "👎"
                )
                await emulator.add_reaction(community.alice, general, answers[-2], "👎" if old > 0 else "👍")
                expected[(answers[-2].id, community.alice.id)] = -old
            question = await emulator.send_message(
                general, people[round_], f"question while away {round_}", mentions_bot=True
            )
        questions.append(question)
        # at-least-once: Discord may send an event again after a resume
        await emulator.redeliver("MESSAGE_CREATE", lambda d, q=question: d["id"] == str(q.id))
        await emulator.redeliver("MESSAGE_REACTION_ADD", lambda d: d["user_id"] == str(carol.id))
        answers.append(await answer_to(emulator, community, question))

    # a drop once an answer has started to appear (its first message is out), reconnecting at once
    question = await emulator.send_message(general, community.bob, "one more, please", mentions_bot=True)
    questions.append(question)
    await emulator.wait_for(
        lambda: any(m.reference_id == question.id for m in emulator.bot_messages(general)), timeout=30
    )
    await emulator.drop_connection()
    answers.append(await answer_to(emulator, community, question))
    await emulator.add_reaction(community.bob, general, answers[-1], "👍")  # a vote after the last resume
    expected[(answers[-1].id, community.bob.id)] = 1

    by_message = {g.discord_message_ids[0]: g.id for g in await until(lambda: generations(database))}
    wanted = sorted((by_message[message], rater, value, True) for (message, rater), value in expected.items())
    await until(lambda: votes(database) == wanted, timeout=20, what=lambda: votes(database))
    assert len(generations(database)) == len(questions)  # every question answered, none twice
    assert [g.discord_message_ids for g in generations(database)] == [[a.id] for a in answers]
    assert user_messages(database) == sorted(q.id for q in questions)
    assert [d.event for d in emulator.dispatches].count("READY") == 1  # every drop was resumed
    # nobody was told something went wrong, and nothing failed inside the bot
    assert all(m.reactors("🔁") for m in emulator.bot_messages(general) if not m.components)  # 👎 offers
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
