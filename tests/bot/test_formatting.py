"""How answers look on Discord: splitting, code fences, the queue notice and edit pacing.

These use FakeServer (tests/fixtures/fake_server.py: scripted text): the model's words are irrelevant here.
"""

from __future__ import annotations

import re

import pytest
from sqlmodel import select

from bot.splitting import DISCORD_LIMIT, Splitter, open_fence, split_message
from sim.discord_emulator import DiscordEmulator
from store.models import Generation
from tests.fixtures.bot import rows, until
from tests.fixtures.discord import Community
from tests.fixtures.fake_server import FakeServer


def long_answer_with_code() -> str:
    """About 5,000 characters: prose paragraphs, then a long fenced code block, then prose again."""
    prose = " ".join(f"Sentence number {i} explains one more detail of the answer." for i in range(19))
    code = "\n".join(f"    value_{i} = compute({i})  # step {i}" for i in range(50))
    return f"{prose}\n\n{prose}\n\n```python\ndef long_function():\n{code}\n```\n\nThat is all. {prose}"


def test_a_5000_character_answer_splits_on_boundaries_and_keeps_fences_whole() -> None:
    text = long_answer_with_code()
    assert 5000 <= len(text) <= 7000

    parts = split_message(text)

    assert len(parts) >= 3 and all(0 < len(part) <= DISCORD_LIMIT for part in parts)
    assert all(open_fence(part) is None for part in parts)  # every message closes what it opens
    inside = [p for p in parts if p.startswith("```python\n")]
    assert inside, "the code block continues in a new message with its language"
    rejoined = "\n".join(parts).replace("\n```\n```python\n", "\n")  # undo each close-and-reopen
    assert re.sub(r"\s+", "", rejoined) == re.sub(r"\s+", "", text)
    first = parts[0]
    assert first.endswith(".")  # cut after a sentence or paragraph, not mid-word


def test_streaming_in_small_pieces_splits_exactly_like_splitting_at_once() -> None:
    text = long_answer_with_code()
    splitter = Splitter()
    for start in range(0, len(text), 7):
        splitter.feed(text[start : start + 7])
    assert splitter.messages() == split_message(text)


@pytest.mark.parametrize(
    ("text", "expected_first"),
    [
        ("a" * 1500 + "\n\n" + "b" * 1000, "a" * 1500),  # paragraph
        ("a" * 1500 + ". " + "b" * 1000, "a" * 1500 + "."),  # sentence
        ("a" * 1500 + " " + "b" * 1000, "a" * 1500),  # word
        ("a" * 2500, "a" * (DISCORD_LIMIT - 4)),  # nothing to cut at: a hard cut
    ],
)
def test_the_best_boundary_wins(text: str, expected_first: str) -> None:
    assert split_message(text)[0] == expected_first


def test_short_answers_stay_whole() -> None:
    assert split_message("Paris.") == ["Paris."]
    assert split_message("x" * DISCORD_LIMIT) == ["x" * DISCORD_LIMIT]


async def test_a_long_answer_with_code_arrives_as_several_messages_with_fences_intact(
    emulator: DiscordEmulator, community: Community, make_bot
) -> None:
    text = long_answer_with_code()
    pieces = [text[i : i + 40] for i in range(0, len(text), 40)]
    await make_bot(FakeServer(pieces))
    await emulator.send_message(community.general, community.alice, "write code", mentions_bot=True)

    await emulator.wait_for(
        lambda: any(m.reactors("🔁") for m in emulator.bot_messages(community.general)), timeout=20
    )
    sent = [m.content for m in emulator.bot_messages(community.general)]
    assert sent == split_message(text)


async def test_a_long_wait_shows_the_queue_position_then_the_answer_replaces_it(
    emulator: DiscordEmulator, community: Community, make_bot
) -> None:
    await make_bot(FakeServer(["Your ", "answer."], delay_s=0.1, queued=5), queue_notice_s=0.1)
    await emulator.send_message(community.general, community.alice, "hi", mentions_bot=True)

    await emulator.wait_for(lambda: any(m.reactors("🔁") for m in emulator.bot_messages(community.general)))
    [reply] = emulator.bot_messages(community.general)
    shown = [r.content for r in reply.revisions]
    assert any("in the queue" in content for content in shown) and shown[-1] == "Your answer."
    assert "#" in shown[0]


async def test_a_full_channel_gets_a_friendly_message(
    emulator: DiscordEmulator, community: Community, make_bot
) -> None:
    server = FakeServer(["slow ", "answer"], delay_s=0.3)
    await make_bot(server, channel_concurrency=1)
    await emulator.send_message(community.general, community.alice, "first", mentions_bot=True)
    await emulator.wait_for(lambda: server.streams)
    second = await emulator.send_message(community.general, community.bob, "second", mentions_bot=True)

    notice = await emulator.wait_for_bot_message(community.general, lambda m: m.reference_id == second.id)
    assert "as many questions as I can in this channel" in notice.content and len(server.streams) == 1


async def test_deleting_the_question_cancels_its_answer(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    server = FakeServer([f"word{i} " for i in range(100)], delay_s=0.02)
    await make_bot(server)
    question = await emulator.send_message(community.general, community.alice, "long one", mentions_bot=True)
    await emulator.wait_for(lambda: emulator.bot_messages(community.general))

    await emulator.delete_message(question)

    await until(lambda: server.streams[0].cancelled)
    assert rows(database, lambda s: list(s.exec(select(Generation)))) == []
