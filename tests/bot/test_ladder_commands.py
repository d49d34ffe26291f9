"""The ladder's slash commands through the emulator: /instructions, /listen, /knowledge (text, files, pins,
pages, removal, review buttons) and /ladder, each acting on the server it is used in."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import Session, select

from sim.discord_emulator import Channel, CommandUnavailable, DiscordEmulator, Message, User
from store import crud, instructions, knowledge
from store.models import Instructions, Passage
from store.scopes import guild_scope
from store.settings import Settings
from tests.fixtures.bot import rows
from tests.fixtures.discord import Community

LADDER_COMMANDS = ["instructions", "knowledge", "ladder", "listen"]


@pytest.fixture
def bot_settings(bot_settings: Settings) -> Settings:
    """Each server its own scope, so "this server's" instructions and book are told apart from others'."""
    return bot_settings.model_copy(update={"train": bot_settings.train.model_copy(update={"scope": "guild"})})


def scope_of(community: Community) -> str:
    return guild_scope(community.guild.id)


async def run(
    emulator: DiscordEmulator,
    community: Community,
    user: User,
    command: str,
    options: dict[str, Any] | None = None,
    *,
    channel: Channel | None = None,
) -> Message:
    """Run `/command` ("knowledge add": a group's) as `user` in #general (or `channel`); its one response."""
    name, _, subcommand = command.partition(" ")
    where = channel or community.general
    interaction = await emulator.invoke_slash(user, community.guild, where, name, options, subcommand or None)
    [response] = await emulator.wait_for_interaction_response(interaction, timeout=10)
    return response


def passages(database: Any, community: Community, status: str = "accepted") -> list[Passage]:
    return rows(
        database,
        lambda s: knowledge.list_passages(session=s, scope=scope_of(community), status=status, limit=100),
    )


async def test_instructions_are_set_shown_and_cleared_per_server_and_channel(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    homework = await emulator.add_channel(community.guild, "homework")
    await make_bot()
    alice = community.alice

    first = await run(emulator, community, alice, "instructions set", {"text": "Be brief."})
    await run(emulator, community, alice, "instructions set", {"text": "Be brief and kind."})
    local = await run(
        emulator, community, alice, "instructions set", {"text": "Answer in French.", "channel": homework}
    )
    shown_here = await run(emulator, community, alice, "instructions show")
    shown_there = await run(emulator, community, alice, "instructions show", {"channel": homework})
    cleared = await run(emulator, community, alice, "instructions clear", {"channel": homework})
    again = await run(emulator, community, alice, "instructions clear", {"channel": homework})

    assert first.ephemeral and "whole server: version 1" in first.content
    assert f"<#{homework.id}>: version 1" in local.content
    assert "**Server-wide** (version 2, set <t:" in shown_here.content
    assert (
        "Be brief and kind." in shown_here.content
        and f"In <#{community.general.id}>:** none." in shown_here.content
    )
    assert "Answer in French." in shown_there.content and "(version 1, set" in shown_there.content
    assert f"Cleared the instructions for <#{homework.id}> (version 2)" in cleared.content
    assert f"no instructions for <#{homework.id}> to clear" in again.content
    scope = scope_of(community)
    in_play = rows(
        database,
        lambda s: instructions.instructions_in_play(session=s, scope=scope, channel_ids=[homework.id]),
    )
    assert (in_play.version, in_play.text) == ("s2", "Be brief and kind.")
    versions = rows(
        database, lambda s: [(r.channel_id, r.version, r.set_by) for r in s.exec(select(Instructions))]
    )
    assert versions == [
        (0, 1, alice.id),
        (0, 2, alice.id),
        (homework.id, 1, alice.id),
        (homework.id, 2, alice.id),
    ]


async def test_instructions_over_the_cap_are_refused_and_naming_it(
    emulator: DiscordEmulator, community: Community, make_bot, database, bot_settings
) -> None:
    await make_bot()
    cap = bot_settings.ladder.instructions_max_chars

    refused = await run(emulator, community, community.alice, "instructions set", {"text": "x" * (cap + 1)})

    assert refused.ephemeral and f"capped at {cap} characters (these have {cap + 1})" in refused.content
    assert "LADDER_INSTRUCTIONS_MAX_CHARS" in refused.content
    assert rows(database, lambda s: list(s.exec(select(Instructions)))) == []


async def test_the_ladder_commands_are_for_admins_in_servers_only(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot()
    published = {c["name"]: c for c in emulator.commands(community.guild)}
    attempts = {
        "instructions set": {"text": "Talk like a pirate."},
        "knowledge add": {"text": "The moon is cheese."},
        "knowledge review": None,
        "listen": {"mode": "on"},
        "ladder": None,
    }
    refusals, opened = [], set()
    for command, options in attempts.items():
        name = command.split()[0]
        if name not in opened:
            with pytest.raises(CommandUnavailable):  # Discord lists them to Manage Server only
                await run(emulator, community, community.bob, command, options)
            # a server admin opens the command to everyone: the bot still refuses
            await emulator.set_command_permission(community.guild, name, community.guild, allowed=True)
            opened.add(name)
        refusals.append(await run(emulator, community, community.bob, command, options))

    for name in LADDER_COMMANDS:
        assert (published[name]["default_member_permissions"], published[name]["contexts"]) == ("32", [0])
        assert published[name]["integration_types"] == [0]
    for command, refusal in zip(attempts, refusals, strict=True):
        assert refusal.ephemeral and f"only admins can use /{command}" in refusal.content
    assert rows(database, lambda s: list(s.exec(select(Instructions)))) == []
    assert passages(database, community) == []
    assert rows(database, lambda s: instructions.listening_channels(session=s)) == set()


async def test_in_a_dm_discord_offers_none_of_them(
    emulator: DiscordEmulator, community: Community, make_bot
) -> None:
    await make_bot(
        guild_ids=[], admin_user_ids=[community.alice.id]
    )  # global commands, so DMs could list them
    dm = await emulator.open_dm(community.alice)

    for name in LADDER_COMMANDS:
        with pytest.raises(CommandUnavailable, match=r"its contexts are \[0\]"):
            await emulator.invoke_slash(community.alice, None, dm, name)


async def test_listen_mode_is_switched_for_the_channel_it_is_used_in(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    bot = await make_bot()
    listening = lambda: rows(database, lambda s: instructions.listening_channels(session=s))  # noqa: E731

    on = await run(emulator, community, community.alice, "listen", {"mode": "on"})
    assert listening() == {community.general.id}
    assert await bot.get_cog("Ladder").listening.is_listening(bot.get_channel(community.general.id))
    again = await run(emulator, community, community.alice, "listen", {"mode": "on"})
    off = await run(emulator, community, community.alice, "listen", {"mode": "off"})

    assert listening() == set()
    assert on.ephemeral and f"Listen mode is now on in <#{community.general.id}>" in on.content
    assert "rate limit still applies (5 answers per person every 60 s)" in on.content
    assert "was already on" in again.content
    assert "is now off" in off.content and "only when mentioned" in off.content


async def test_knowledge_is_added_from_text_and_from_text_files_only(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    await make_bot(attachment_max_bytes=2000)
    alice = community.alice
    notes = (
        "The chess ladder resets monthly. " * 12 + "\n\n" + "Study night is on Thursdays. " * 12
    ).encode()

    typed = await run(emulator, community, alice, "knowledge add", {"text": "Mira founded Lantern Hall."})
    filed = await run(emulator, community, alice, "knowledge add", {"file": ("notes.md", notes)})
    image = await run(emulator, community, alice, "knowledge add", {"file": ("cat.png", b"\x89PNG\r\n")})
    huge = await run(emulator, community, alice, "knowledge add", {"file": ("big.txt", b"words " * 500)})
    empty = await run(emulator, community, alice, "knowledge add", {"title": "nothing"})

    added = passages(database, community)
    by_title = {p.title: p for p in added}
    assert sorted(by_title) == ["added by alice", "notes.md (1/2)", "notes.md (2/2)"]
    assert by_title["added by alice"].text == "Mira founded Lantern Hall."
    assert by_title["notes.md (2/2)"].text.startswith("Study night is on Thursdays.")
    assert {p.added_by for p in added} == {alice.id} and {p.source for p in added} == {"admin"}
    assert (
        typed.ephemeral
        and f"Added 1 passage to the open book: #{by_title['added by alice'].id}." in typed.content
    )
    first, second = by_title["notes.md (1/2)"].id, by_title["notes.md (2/2)"].id
    assert f"Added 2 passages to the open book: #{first}, #{second}." in filed.content
    assert "only add text files (.txt or .md), not cat.png" in image.content
    assert "big.txt is 3,000 bytes; the open book takes files of up to 2,000 bytes" in huge.content
    assert "Give me the text to add, or a .txt or .md file." in empty.content


async def test_pinned_messages_join_the_book_once(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    rules = await emulator.send_message(community.general, community.bob, "Memes go in #lounge only.")
    hours = await emulator.send_message(community.general, community.alice, "Study night: Thursdays, 19:00.")
    await emulator.send_message(community.general, community.bob, "not pinned")
    for message in (rules, hours):
        await emulator.pin_message(emulator.world.owner, message)
    await make_bot()

    first = await run(emulator, community, community.alice, "knowledge pins")
    late = await emulator.send_message(community.general, community.bob, "Be kind.")
    await emulator.pin_message(emulator.world.owner, late)
    second = await run(emulator, community, community.alice, "knowledge pins")

    pinned = sorted(
        (p.discord_message_id, p.author_id, p.text, p.title) for p in passages(database, community)
    )
    assert pinned == [
        (rules.id, community.bob.id, "Memes go in #lounge only.", "pinned in #general"),
        (hours.id, community.alice.id, "Study night: Thursdays, 19:00.", "pinned in #general"),
        (late.id, community.bob.id, "Be kind.", "pinned in #general"),
    ]
    assert first.ephemeral and "Added 2 new pinned messages to the open book." in first.content
    assert (
        "Added 1 new pinned message to the open book; 2 were there already or had no text." in second.content
    )


async def test_list_pages_through_the_book_and_remove_takes_only_this_servers_passages(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    scope = scope_of(community)

    def add(title: str, *, where: str = scope, status: str = "accepted") -> int:
        [row] = rows(
            database,
            lambda s: knowledge.add_passages(
                session=s,
                scope=where,
                source="admin",
                title=title,
                text=f"All about {title}.",
                max_chars=600,
                added_by=community.alice.id,
                status=status,
            ),
        )
        return row.id

    ids = [add(f"topic {n}") for n in range(12)]
    add("a correction", status="pending")
    elsewhere = add("another server's", where=guild_scope(1))
    await make_bot()

    page_one = await run(emulator, community, community.alice, "knowledge list")
    page_two = await run(emulator, community, community.alice, "knowledge list", {"page": 2})
    with pytest.raises(ValueError, match="within"):  # pages start at 1: Discord's client takes no 0
        await run(emulator, community, community.alice, "knowledge list", {"page": 0})
    removed = await run(emulator, community, community.alice, "knowledge remove", {"id": ids[0]})
    unknown = await run(emulator, community, community.alice, "knowledge remove", {"id": elsewhere})

    assert page_one.content.startswith(
        "**The open book:** 12 passages; 1 wait for /knowledge review. Page 1 of 2, newest first:"
    )
    assert f"`#{ids[11]}` **topic 11** (admin): All about topic 11." in page_one.content
    assert f"`#{ids[2]}`" in page_one.content and f"`#{ids[1]}`" not in page_one.content
    assert "Page 2 of 2" in page_two.content and f"`#{ids[0]}` **topic 0**" in page_two.content
    assert f"Removed #{ids[0]} (topic 0) from the open book." in removed.content
    assert f"This server's book has no passage #{elsewhere}" in unknown.content
    assert ids[0] not in [p.id for p in passages(database, community)]
    assert rows(database, lambda s: s.get(Passage, elsewhere)) is not None


async def test_review_buttons_accept_and_drop_pending_passages_for_the_admin_who_asked(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    scope = scope_of(community)
    pending = [
        rows(
            database,
            lambda s, n=n: knowledge.add_passages(
                session=s,
                scope=scope,
                source="correction",
                title=f"correction by bob {n}",
                text=f"answer {n}. (asked: question {n}?)",
                max_chars=600,
                added_by=None,
                author_id=community.bob.id,
                status="pending",
            ),
        )[0].id
        for n in range(7)
    ]
    await make_bot()

    review = await run(emulator, community, community.alice, "knowledge review")
    shown = sorted(
        (i for i in pending if f"**#{i}**" in review.content), key=lambda i: review.content.index(f"**#{i}**")
    )
    buttons = [c["custom_id"] for row in review.components for c in row["components"]]
    with pytest.raises(PermissionError):  # nobody but the admin who asked sees the list
        await emulator.click_component(community.bob, review, f"knowledge:accept:{shown[0]}")
    accepted = await emulator.click_component(community.alice, review, f"knowledge:accept:{shown[0]}")
    await emulator.wait_for(lambda: accepted.acknowledged and "accepted by alice" in review.content)
    dropped = await emulator.click_component(community.alice, review, f"knowledge:drop:{shown[1]}")
    await emulator.wait_for(lambda: dropped.acknowledged and "dropped by alice" in review.content)

    assert review.ephemeral and len(shown) == 5 and "2 more wait" in review.content
    assert (
        buttons[:2] == [f"knowledge:accept:{shown[0]}", f"knowledge:drop:{shown[0]}"] and len(buttons) == 10
    )
    assert f"✅ #{shown[0]} accepted by alice." in review.content
    assert f"🗑️ #{shown[1]} dropped by alice." in review.content
    remaining = [c["custom_id"] for row in review.components for c in row["components"]]
    assert len(remaining) == 6 and not any(c.endswith((f":{shown[0]}", f":{shown[1]}")) for c in remaining)
    [book] = passages(database, community)
    assert (book.id, book.decided_by) == (shown[0], community.alice.id)
    assert rows(database, lambda s: s.get(Passage, shown[1])) is None
    assert len(passages(database, community, status="pending")) == 5


async def test_ladder_tells_each_rungs_rate_and_what_to_do(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    scope = scope_of(community)

    def answers(session: Session, count: int, up: int, scope: str = scope, **rung: Any) -> None:
        """`count` answers on one rung, the first `up` of them voted 👍 and the rest 👎."""
        for n in range(count):
            generation = crud.record_generation(
                session=session, prompt=[], completion="…", scope=scope, **rung
            )
            assert generation.id is not None
            value = 1 if n < up else -1
            crud.record_feedback(session=session, generation_id=generation.id, rater_id=7, value=value)

    rows(database, lambda s: answers(s, 10, 4, instructions_version="s1"))
    rows(database, lambda s: answers(s, 20, 11, instructions_version="s1", passage_ids=[1]))
    rows(database, lambda s: answers(s, 12, 12, adapter_version="v1"))
    rows(database, lambda s: answers(s, 30, 0, scope=guild_scope(1)))  # another server's
    await make_bot()

    ladder = await run(emulator, community, community.alice, "ladder")

    assert ladder.ephemeral
    assert ladder.content.startswith(
        "Instructions alone got 40% 👍 (10 votes); with the open book 55% (20 votes); adapter v1 100% "
        "(12 votes). Adapter v1 beats the rungs below"
    )
    assert "• instructions s1: 40% 👍 of 10 votes (10 answers)" in ladder.content
    assert "• open book with instructions s1: 55% 👍 of 20 votes (20 answers)" in ladder.content
    assert "• adapter v1: 100% 👍 of 12 votes (12 answers)" in ladder.content
