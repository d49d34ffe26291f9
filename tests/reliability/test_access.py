"""Access and privacy through the emulator: admin commands, the token, forgetting, opting out, vote floods.

A real GradschoolBot on the tiny model, a real SQLite store, and discord.py's own HTTP and gateway code
against the emulator. tests/bot/test_commands.py covers the plain cases (a regular member refused in the
guild, /forget-me deleting rows); tests/store/test_privacy.py covers forget_user row by row.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import discord
import pytest
import sqlalchemy as sa
from sqlmodel import Session, select
from typer.testing import CliRunner

from gradschool.cli import app
from sim.discord_emulator import CommandUnavailable, DiscordEmulator, Message
from sim.seeding import good_answer, prompt, question
from store import crud
from store.datasets import KINDS, build_datasets
from store.models import AdapterVersion, Correction, Feedback, Generation, TrainingRun
from store.models import Message as MessageRow
from store.settings import Settings, SettingsError, TrainSettings, load_settings
from tests.fixtures.bot import add_adapter, rows, until
from tests.fixtures.discord import Community


async def run_slash(emulator: DiscordEmulator, user, guild, channel, name: str, options=None) -> Message:
    """Run `/name` ("knowledge add": a group's command) and return its one response."""
    command, _, subcommand = name.partition(" ")
    interaction = await emulator.invoke_slash(user, guild, channel, command, options, subcommand or None)
    [answer] = await emulator.wait_for_interaction_response(interaction, timeout=10)
    return answer


def registry_state(database) -> list[tuple[str, str]]:
    versions = rows(database, lambda s: list(s.exec(select(AdapterVersion))))
    return sorted((v.name, v.status) for v in versions)


async def answer_to(emulator: DiscordEmulator, channel, question_message: Message) -> Message:
    """The bot's finished answer to a message (the feedback reactions are added last)."""
    return await emulator.wait_for(
        lambda: next(
            (
                m
                for m in emulator.bot_messages(channel)
                if m.reference_id == question_message.id and m.reactors("🔁")
            ),
            None,
        ),
        timeout=30,
        what=f"the answer to {question_message.content!r}",
    )


# --- admin commands ---


async def test_admin_commands_are_refused_outside_the_guilds_where_someone_is_admin(
    emulator: DiscordEmulator, community: Community, make_bot, database, bot_settings, make_tiny_adapter
) -> None:
    # Manage Server (alice) or an admin role (carol) makes someone an admin of the guild it is held in only.
    other = await emulator.add_guild("Elsewhere")
    lobby = await emulator.add_channel(other, "lobby")
    carol = await emulator.add_user("carol")
    moderators = await emulator.add_role(community.guild, "moderators")
    await emulator.add_member(community.guild, carol, roles=[moderators])
    await emulator.add_member(other, carol)
    await emulator.add_member(other, community.alice)
    await emulator.add_member(other, community.bob, permissions=["manage_guild"])  # bob runs Elsewhere
    # global commands (no DISCORD_GUILD_IDS), so they exist in DMs and in both guilds;
    # the operator lets the bot serve Grad School only
    bot = await make_bot(guild_ids=[], admin_role_ids=[moderators.id], allowed_guild_ids=[community.guild.id])
    admin_commands = {  # each with its required options filled in; a group's commands by their full name
        command.qualified_name: {
            option.display_name: option.choices[0].value
            if option.choices
            else (1 if option.type == discord.AppCommandOptionType.integer else "v1")
            for option in command.parameters
            if option.required
        }
        for command in bot.tree.walk_commands(type=discord.AppCommandType.chat_input)
        if isinstance(command, discord.app_commands.Command)
        and "(admins)" in (command.root_parent or command).description
    }
    assert set(admin_commands) == {
        "retrain",
        "rollback",
        "activate",
        "doctor",
        "share-data",
        "listen",
        "ladder",
        *(f"instructions {name}" for name in ("set", "show", "clear")),
        *(f"knowledge {name}" for name in ("add", "pins", "list", "remove", "review")),
    }
    first = add_adapter(database, bot_settings, make_tiny_adapter, seed=1)
    add_adapter(database, bot_settings, make_tiny_adapter, seed=2)  # active; `first` is retired
    before = registry_state(database)
    dms = {person.id: await emulator.open_dm(person) for person in (community.alice, community.bob, carol)}
    attempts = [
        (community.bob, community.guild, community.general),  # a regular member
        (community.bob, None, dms[community.bob.id]),
        (community.bob, other, lobby),  # admin of a guild the bot is not there to serve
        (community.alice, None, dms[community.alice.id]),  # a DM is no guild's: Manage Server counts nowhere
        (community.alice, other, lobby),
        (carol, None, dms[carol.id]),
        (carol, other, lobby),  # the admin role belongs to Grad School, not to her
    ]

    for person, guild, channel in attempts:
        for name, options in admin_commands.items():
            where = f"/{name} by {person.name} in {channel.name or 'a DM'}"
            if guild is None:  # admin commands are for servers only: Discord does not offer them in DMs
                with pytest.raises(CommandUnavailable):
                    await run_slash(emulator, person, guild, channel, name, options)
                continue
            answer = await run_slash(emulator, person, guild, channel, name, options)
            assert answer.ephemeral and f"only admins can use /{name}" in answer.content, where

    assert rows(database, lambda s: list(s.exec(select(TrainingRun)))) == []
    assert registry_state(database) == before
    # the same commands go through where each one is admin, so the refusals above were about who and where
    assert (
        "Queued training run"
        in (await run_slash(emulator, carol, community.guild, community.general, "retrain")).content
    )
    answer = await run_slash(
        emulator, community.alice, community.guild, community.general, "activate", {"version": first.name}
    )
    assert f"Now answering with {first.name}" in answer.content


# --- the token ---


def database_text(database) -> str:
    """Every row of every table, as text."""
    with database.connect() as connection:
        tables = sa.inspect(connection).get_table_names()
        return "\n".join(
            f"{table}: {row!r}"
            for table in tables
            for row in connection.execute(sa.text(f'SELECT * FROM "{table}"'))
        )


async def test_the_token_appears_in_no_log_message_row_or_error(
    emulator: DiscordEmulator,
    community: Community,
    make_bot,
    database,
    bot_settings,
    make_tiny_adapter,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, discord.py's HTTP and gateway included
    token = emulator.token  # the bot logs in with it, as with DISCORD_TOKEN in production
    monkeypatch.setenv("DISCORD_TOKEN", token)
    bot = await make_bot(token=load_settings(env_file=None).discord.token)
    settings = bot.services.settings
    assert settings.discord.token is not None
    general, alice, bob = community.general, community.alice, community.bob

    asked = await emulator.send_message(general, bob, "what is a token?", mentions_bot=True)
    answer = await answer_to(emulator, general, asked)
    await emulator.add_reaction(alice, general, answer, "👍")
    await until(lambda: rows(database, lambda s: list(s.exec(select(Feedback)))))
    await run_slash(emulator, alice, community.guild, general, "status")
    broken = add_adapter(database, bot_settings, make_tiny_adapter, seed=1, activate=False)
    (Path(broken.path) / "adapter_config.json").unlink()  # a command that fails: the adapter won't load
    failed = await run_slash(emulator, alice, community.guild, general, "activate", {"version": broken.name})
    assert "no adapter_config.json" in failed.content
    # handlers that raise: tables vanish from under the bot
    with database.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE trainingrun RENAME TO trainingrun_away")
        connection.exec_driver_sql("ALTER TABLE feedback RENAME TO feedback_away")
    crashed = await run_slash(emulator, bob, community.guild, general, "status")
    assert "didn't work" in crashed.content
    await emulator.add_reaction(bob, general, answer, "👎")
    await until(lambda: "Ignoring exception in on_raw_reaction_add" in caplog.text)
    with database.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE trainingrun_away RENAME TO trainingrun")
        connection.exec_driver_sql("ALTER TABLE feedback_away RENAME TO feedback")
    with pytest.raises(SettingsError) as bad_settings:  # DISCORD_TOKEN is set; two other variables are bad
        monkeypatch.setenv("DISCORD_ADMIN_USER_IDS", "alice")
        monkeypatch.setenv("DISCORD_HISTORY_LIMIT", "0")
        load_settings(env_file=None)
    with pytest.raises(SettingsError) as bad_token:  # the token itself is bad (an embedder passed a list)
        load_settings(env_file=None, discord={"token": [token]})

    places = {
        "logs": caplog.text + "".join(repr((r.msg, r.args, r.exc_text)) for r in caplog.records),
        "Discord messages": repr(list(emulator.world.messages.values())),
        "what the bot sent Discord": repr([call.body for call in emulator.rest_calls]),
        "database": database_text(database),
        "settings": repr(settings) + settings.model_dump_json() + str(settings.model_dump()),
        "settings errors": str(bad_settings.value) + str(bad_token.value),
    }
    assert "Traceback" in places["logs"] and "no such table" in places["logs"]  # the errors were logged
    assert "what is a token?" in places["database"] and "DISCORD_ADMIN_USER_IDS" in places["settings errors"]
    assert [where for where, text in places.items() if token in text] == []


# --- forgetting and opting out ---


def dataset_text(database, settings: Settings) -> str:
    """Every dataset and split build_datasets makes, as text; no rater cap (a few votes here decide all)."""
    uncapped = settings.train.model_copy(update={"max_rater_share": 1.0})
    built = rows(database, lambda s: build_datasets(session=s, settings=uncapped))
    return json.dumps([built.train[kind] + built.holdout[kind] for kind in KINDS], ensure_ascii=False)


async def votes_counted(database, count: int) -> None:
    await until(lambda: len(rows(database, lambda s: list(s.exec(select(Feedback))))) >= count, what="votes")


async def correct(emulator: DiscordEmulator, person, channel, answer: Message, text: str) -> None:
    """Apps > Suggest a better answer, and submit `text`."""
    opened = await emulator.invoke_message_command(person, channel, answer, "Suggest a better answer")
    await emulator.wait_for_modal(opened)
    submitted = await emulator.submit_modal(opened, {"better": text})
    await emulator.wait_for_interaction_response(submitted)


def export(out: Path) -> str:
    """`gradschool export` of every dataset and split, as text."""
    runner = CliRunner()
    text = ""
    for kind in KINDS:
        result = runner.invoke(app, ["export", "--kind", kind, "--split", "all", "--out", str(out / kind)])
        assert result.exit_code == 0, result.output
        text += (out / kind).read_text()
    return text


async def test_forget_me_takes_my_words_out_of_the_store_and_every_dataset(
    emulator: DiscordEmulator,
    community: Community,
    make_bot,
    database,
    bot_settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    general, alice, bob = community.general, community.alice, community.bob
    carol = await emulator.add_user("carol")
    await emulator.add_member(community.guild, carol)
    await make_bot(user_rate_limit=100)
    mine = await emulator.send_message(general, bob, "Whiskers is the name of my cat", mentions_bot=True)
    to_me = await answer_to(emulator, general, mine)
    quoting = await emulator.send_message(general, alice, "what a lovely name", reply_to=to_me)
    to_alice = await answer_to(emulator, general, quoting)  # her prompt holds bob's words
    theirs = await emulator.send_message(general, carol, "tell me about zebras", mentions_bot=True)
    to_carol = await answer_to(emulator, general, theirs)
    for person, answer in (
        (alice, to_me),
        (carol, to_me),
        (carol, to_alice),
        (bob, to_alice),
        (alice, to_carol),
    ):
        await emulator.add_reaction(person, general, answer, "👍")
    await votes_counted(database, 5)
    await correct(emulator, bob, general, to_carol, "Zebras have stripes, says Bob")
    assert "Whiskers" in dataset_text(database, bot_settings)  # it would be trained on
    assert "says Bob" in dataset_text(database, bot_settings)

    asked = await emulator.invoke_slash(bob, community.guild, general, "forget-me")
    [question] = await emulator.wait_for_interaction_response(asked)
    await emulator.click_component(bob, question, "forget:confirm")
    await emulator.wait_for(lambda: "Deleted" in question.content)

    stored = database_text(database)
    assert "Whiskers" not in stored and "says Bob" not in stored
    assert (
        rows(database, lambda s: s.exec(select(MessageRow).where(MessageRow.author_id == bob.id)).all()) == []
    )
    assert rows(database, lambda s: s.exec(select(Feedback).where(Feedback.rater_id == bob.id)).all()) == []
    assert rows(database, lambda s: s.exec(select(Correction)).all()) == []
    assert (
        rows(database, lambda s: s.exec(select(Generation).where(Generation.user_id == bob.id)).all()) == []
    )
    # after forgetting, the bot still answers bob, but what he writes and how he votes stay out of training
    again = await emulator.send_message(general, bob, "Pineapple belongs on pizza", mentions_bot=True)
    to_me_again = await answer_to(emulator, general, again)
    later = await emulator.send_message(general, carol, "and what about okapis", mentions_bot=True)
    to_carol_later = await answer_to(emulator, general, later)
    await emulator.add_reaction(alice, general, to_me_again, "👍")
    await emulator.add_reaction(bob, general, to_carol_later, "👍")  # his vote alone
    await votes_counted(database, 3)  # alice's on zebras, and these two

    datasets = dataset_text(database, bot_settings)
    assert "zebras" in datasets  # carol's answer, liked by alice, is still there
    assert "Whiskers" not in datasets and "says Bob" not in datasets
    assert "Pineapple" not in datasets and "okapis" not in datasets
    monkeypatch.setenv("GRADSCHOOL_DATA_DIR", str(bot_settings.data_dir))
    monkeypatch.setenv("TRAIN_MAX_RATER_SHARE", "1")
    monkeypatch.chdir(tmp_path)
    exported = export(tmp_path / "export")
    assert "zebras" in exported
    assert not {"Whiskers", "says Bob", "Pineapple", "okapis"} & set(exported.replace('"', " ").split())


async def test_nobody_else_can_press_delete_on_my_forget_me(
    emulator: DiscordEmulator, community: Community, make_bot, database
) -> None:
    general, alice, bob = community.general, community.alice, community.bob
    await make_bot()
    asked = await emulator.send_message(general, bob, "keep this", mentions_bot=True)
    await answer_to(emulator, general, asked)
    forget = await emulator.invoke_slash(bob, community.guild, general, "forget-me")
    [question] = await emulator.wait_for_interaction_response(forget)

    # Discord shows the ephemeral question to bob alone; a hostile client's forged click, even an admin's,
    # is ignored
    with pytest.raises(PermissionError):
        await emulator.click_component(alice, question, "forget:confirm")
    await emulator.click_component(alice, question, "forget:confirm", forged=True)
    # a round trip: by the time /status is answered, the bot has read and run alice's click
    await run_slash(emulator, bob, community.guild, general, "status")
    await emulator.click_component(bob, question, "forget:cancel")
    await emulator.wait_for(lambda: question.content.startswith(("Nothing", "Done")), what="an outcome")

    assert question.content == "Nothing was deleted."
    assert rows(database, lambda s: s.exec(select(MessageRow).where(MessageRow.author_id == bob.id)).all())
    assert not rows(database, lambda s: crud.is_excluded(session=s, user_id=bob.id))


async def test_an_opted_out_persons_words_and_votes_are_never_trained_on(
    emulator: DiscordEmulator, community: Community, make_bot, database, bot_settings
) -> None:
    general, alice, bob = community.general, community.alice, community.bob
    carol = await emulator.add_user("carol")
    await emulator.add_member(community.guild, carol)
    await make_bot(user_rate_limit=100)
    await run_slash(emulator, bob, community.guild, general, "optout")
    mine = await emulator.send_message(general, bob, "Otters hold hands while they sleep", mentions_bot=True)
    to_me = await answer_to(emulator, general, mine)
    quoting = await emulator.send_message(general, alice, "is that true?", reply_to=to_me)
    to_alice = await answer_to(emulator, general, quoting)  # her prompt holds bob's words
    owls = await emulator.send_message(general, carol, "why do owls hoot", mentions_bot=True)
    to_owls = await answer_to(emulator, general, owls)
    ravens = await emulator.send_message(general, carol, "are ravens clever", mentions_bot=True)
    to_ravens = await answer_to(emulator, general, ravens)
    # others like his answer and the one quoting him; his votes and his correction are on carol's
    for person, answer in (
        (alice, to_me),
        (carol, to_me),
        (carol, to_alice),
        (bob, to_owls),
        (alice, to_ravens),
    ):
        await emulator.add_reaction(person, general, answer, "👍")
    await votes_counted(database, 5)
    await correct(emulator, bob, general, to_ravens, "Ravens solve puzzles, says Bob")

    datasets = dataset_text(database, bot_settings)
    assert "ravens" in datasets  # liked by alice: carol's answers still count
    assert "Otters" not in datasets and "says Bob" not in datasets
    assert "owls" not in datasets  # only bob voted for it
    await run_slash(emulator, bob, community.guild, general, "optin")  # the same data, bob back in
    datasets = dataset_text(database, bot_settings)
    assert "Otters" in datasets and "says Bob" in datasets and "owls" in datasets


def test_someone_quoted_under_a_name_they_no_longer_use_is_still_left_out(session: Session) -> None:
    bob, alice, channel = 202, 101, 5
    crud.record_message(
        session=session, role="user", content="Otters hold hands", author_id=bob, author_name="bob",
        discord_id=1, channel_id=channel,
    )  # fmt: skip
    chat = [{"role": "user", "content": "Robert: Otters hold hands"}, {"role": "user", "content": "really?"}]
    quoting = crud.record_generation(
        session=session, prompt=chat, completion="yes", user_id=alice, channel_id=channel
    )
    assert quoting.id is not None
    crud.record_feedback(session=session, generation_id=quoting.id, rater_id=alice, value=1)
    settings = TrainSettings(_env_file=None, holdout_fraction=0, max_rater_share=1)  # type: ignore[call-arg]
    sft = lambda: build_datasets(session=session, settings=settings).train["sft"]  # noqa: E731
    assert len(sft()) == 1

    crud.set_opt_out(session=session, user_id=bob, opted_out=True)
    assert sft() == []
    crud.forget_user(session=session, user_id=bob)
    assert session.get(Generation, quoting.id) is None


# --- one rater's flood of votes ---


async def test_one_rater_flooding_thumbs_up_decides_at_most_their_share(
    emulator: DiscordEmulator, community: Community, make_bot, database, bot_settings
) -> None:
    general, alice, bob = community.general, community.alice, community.bob
    mallory = await emulator.add_user("mallory")
    await emulator.add_member(community.guild, mallory)
    await make_bot()
    answers = []
    for i in range(100):  # the bot's answers, written straight into the channel and the store
        posted = emulator.service.post_message(
            general.id, emulator.bot_user.id, {"content": good_answer(i)}, []
        )
        generation = rows(
            database,
            lambda s, i=i: crud.record_generation(
                session=s, prompt=prompt(question(i)), completion=good_answer(i), user_id=bob.id
            ),
        )
        rows(
            database,
            lambda s, g=generation, m=posted: crud.attach_discord_messages(
                session=s, generation_id=g.id, discord_ids=[m.id], contents=[m.content]
            ),
        )
        answers.append(posted)
    for answer in answers:
        await emulator.add_reaction(mallory, general, answer, "👍")
    for answer in answers[:10]:  # the community agrees on a few
        await emulator.add_reaction(alice, general, answer, "👍")
        await emulator.add_reaction(bob, general, answer, "👍")
    await votes_counted(database, 120)

    share = bot_settings.train.max_rater_share
    built = rows(database, lambda s: build_datasets(session=s, settings=bot_settings.train))
    for kind in ("sft", "kto"):
        examples = [json.dumps(row) for row in built.train[kind] + built.holdout[kind]]
        backed = [i for i in range(10) if any(question(i) in example for example in examples)]
        hers_alone = [i for i in range(10, 100) if any(question(i) in example for example in examples)]
        assert backed == list(range(10)), kind  # what several people liked all stays
        assert 0 < len(hers_alone) <= share * len(examples), kind
