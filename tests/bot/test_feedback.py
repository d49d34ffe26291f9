"""Reactions become votes, 🔁 makes a linked alternative, and the correction form stores a Correction."""

from __future__ import annotations

from sqlmodel import select

from sim.discord_emulator import DiscordEmulator
from store import crud
from store.models import Correction, Feedback, Generation
from tests.fixtures.bot import generations, rows, until
from tests.fixtures.discord import Community, answered


def votes(database) -> list[tuple[int, int, bool]]:
    """(rater, value, live) per Feedback row, by rater (reactions are handled concurrently, in any order)."""
    found = rows(database, lambda s: list(s.exec(select(Feedback))))
    return sorted((f.rater_id, f.value, f.removed_at is None) for f in found)


async def ask(emulator: DiscordEmulator, community: Community, database, text: str = "hello"):
    await emulator.send_message(community.general, community.alice, text, mentions_bot=True)
    [reply] = await answered(emulator, community.general)
    [generation] = await until(lambda: generations(database))
    return reply, generation


async def test_votes_switches_and_retractions_match_the_feedback_table_exactly(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot()
    reply, generation = await ask(emulator, community, database)
    assert votes(database) == []  # the bot's own 👍 👎 🔁 never count
    general, alice, bob = community.general, community.alice, community.bob

    await emulator.add_reaction(alice, general, reply, "👍")
    await emulator.add_reaction(bob, general, reply, "👎")
    await until(lambda: len(votes(database)) == 2)
    await emulator.add_reaction(alice, general, reply, "👎")  # alice switches: 👎 replaces her 👍
    await emulator.remove_reaction(alice, general, reply, "👍")  # ...and un-👍 no longer retracts anything
    await emulator.remove_reaction(bob, general, reply, "👎")  # bob retracts
    await emulator.add_reaction(bob, general, reply, "🎉")  # not a vote

    await until(
        lambda: votes(database) == [(alice.id, -1, True), (bob.id, -1, False)], what=lambda: votes(database)
    )
    await emulator.add_reaction(bob, general, reply, "👍")  # bob votes again: the same row comes back
    await until(lambda: votes(database) == [(alice.id, -1, True), (bob.id, 1, True)])
    live = rows(database, lambda s: crud.count_votes_since(session=s, since=None))
    assert live == 2
    assert {f.generation_id for f in rows(database, lambda s: list(s.exec(select(Feedback))))} == {
        generation.id
    }


async def test_a_reaction_on_an_old_answer_the_bot_never_saw_counts(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    # An answer from an earlier run of the bot: in the store and on Discord, but not in this bot's cache.
    old = emulator.service.post_message(community.general.id, emulator.bot_user.id, {"content": "old"}, [])
    generation = rows(
        database,
        lambda s: crud.record_generation(
            session=s, prompt=[{"role": "user", "content": "q"}], completion="old"
        ),
    )
    rows(
        database,
        lambda s: crud.attach_discord_messages(
            session=s, generation_id=generation.id, discord_ids=[old.id], contents=["old"]
        ),
    )
    bot = await make_bot()
    assert bot.get_partial_messageable(community.general.id) and old.id not in {
        m.id for m in bot.cached_messages
    }

    await emulator.add_reaction(community.bob, community.general, old, "👍")

    await until(lambda: votes(database) == [(community.bob.id, 1, True)])


async def test_regenerate_makes_an_alternative_linked_to_the_original_with_the_same_prompt(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot()
    reply, _ = await ask(emulator, community, database, "tell me a story")

    await emulator.add_reaction(community.bob, community.general, reply, "🔁")

    [again] = await answered(emulator, community.general, after=reply)
    first, second = await until(lambda: len(generations(database)) == 2 and generations(database))
    assert second.regenerates == first.id and second.prompt == first.prompt
    assert second.request_message_id == first.request_message_id and second.user_id == community.alice.id
    assert second.discord_message_ids == [again.id] and again.reference_id == reply.id
    assert second.sampling["temperature"] >= 0.8
    assert votes(database) == []  # 🔁 is no vote


async def test_the_correction_form_stores_a_better_answer(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot()
    reply, generation = await ask(emulator, community, database, "2 + 2?")
    question = emulator.messages(community.general)[0]

    opened = await emulator.invoke_message_command(
        community.bob, community.general, reply, "Suggest a better answer"
    )
    modal = await emulator.wait_for_modal(opened)
    submitted = await emulator.submit_modal(opened, {"better": "2 + 2 = 4"})
    [thanks] = await emulator.wait_for_interaction_response(submitted)
    refused = await emulator.invoke_message_command(
        community.bob, community.general, question, "Suggest a better answer"
    )
    [refusal] = await emulator.wait_for_interaction_response(refused)

    corrections = rows(database, lambda s: list(s.exec(select(Correction))))
    assert [(c.generation_id, c.author_id, c.content) for c in corrections] == [
        (generation.id, community.bob.id, "2 + 2 = 4")
    ]
    assert modal["title"] == "Suggest a better answer" and thanks.ephemeral
    assert "isn't one of my answers" in refusal.content and refusal.ephemeral
    assert rows(database, lambda s: len(list(s.exec(select(Generation))))) == 1


async def test_events_delivered_twice_are_recorded_once(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    """Discord's gateway is at-least-once: a repeated question, vote or 🔁 must not count twice."""
    await make_bot()
    reply, _ = await ask(emulator, community, database, "tell me a story")
    await emulator.redeliver("MESSAGE_CREATE", lambda d: d["author"]["id"] == str(community.alice.id))
    await emulator.add_reaction(community.bob, community.general, reply, "👍")
    await emulator.redeliver("MESSAGE_REACTION_ADD", lambda d: d["emoji"]["name"] == "👍")
    await emulator.add_reaction(community.bob, community.general, reply, "🔁")
    await emulator.redeliver("MESSAGE_REACTION_ADD", lambda d: d["emoji"]["name"] == "🔁")

    await answered(emulator, community.general, after=reply)
    await until(lambda: len(generations(database)) == 2)
    await emulator.send_message(community.general, community.alice, "and another", mentions_bot=True)
    await until(lambda: len(generations(database)) == 3)  # the bot is caught up with every event above
    assert [g.regenerates is not None for g in generations(database)] == [False, True, False]
    assert votes(database) == [(community.bob.id, 1, True)]


async def test_regenerate_again_after_taking_the_reaction_back(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot()
    reply, first = await ask(emulator, community, database, "tell me a story")
    for expected in (2, 3):
        await emulator.add_reaction(community.bob, community.general, reply, "🔁")
        await until(lambda n=expected: len(generations(database)) == n)
        await emulator.remove_reaction(community.bob, community.general, reply, "🔁")
    alternatives = await until(lambda: len(generations(database)) == 3 and generations(database)[1:])
    assert all(g.regenerates == first.id for g in alternatives)
