"""Acts out hostile-input cases through the emulator against one bot, and waits for what each one causes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine as Database
from sqlmodel import col, select

from engine.prompting import ChatMessage
from engine.serving import ACTIVE
from sim.discord_emulator import Channel, DiscordEmulator, Message, User
from sim.discord_emulator.state import permission_bits
from store.models import Feedback, Generation
from store.models import Message as Row
from tests.fixtures.bot import rows
from tests.fixtures.discord import Community
from tests.fixtures.fake_server import FakeServer, FakeStream
from tests.reliability.support.hostile_actions import Correct, Menu, React, Slash
from tests.reliability.support.hostile_inputs import NITRO_LIMIT, Case, During, Post

PLACEHOLDER = re.compile(r"⟨(\w+)⟩")
ANSWER_TIMEOUT = 30.0


async def poll(condition: Callable[[], Any], what: str) -> Any:
    """Wait for what the emulator cannot see (the store, the model), gently: the bot shares this loop."""
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT):
            while not (result := condition()):
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise TimeoutError(f"waited {ANSWER_TIMEOUT}s for {what}") from None
    return result


class EchoServer(FakeServer):
    """Answers with the question itself (plus `suffix`), in pieces: hostile text becomes the bot's answer."""

    def __init__(self, suffix: str = "") -> None:
        super().__init__([])
        self.suffix = suffix

    def stream(
        self, messages: Sequence[ChatMessage], *, adapter: Any = ACTIVE, **sampling: Any
    ) -> FakeStream:
        text = messages[-1]["content"] + self.suffix
        stream = FakeStream(list(messages), [text[i : i + 80] for i in range(0, len(text), 80)], 0.0, 0)
        self.streams.append(stream)
        return stream


@dataclass
class Harness:
    """One bot, the people around it, the messages cases act on, and what each case produced."""

    emulator: DiscordEmulator
    community: Community
    database: Database
    server: Any
    people: dict[str, User] = field(default_factory=dict)
    targets: dict[str, Message] = field(default_factory=dict)
    sent: dict[str, Any] = field(default_factory=dict)  # case name -> its message, rater or responses
    expected_rows: dict[int, str | None] = field(default_factory=dict)  # discord id -> stored content
    answered: set[int] = field(default_factory=set)  # questions that must have exactly one Generation
    ids: dict[str, str] = field(default_factory=dict)
    cases: list[Case] = field(default_factory=list)

    @property
    def channel(self) -> Channel:
        return self.community.general

    # -- setting up -----------------------------------------------------------------------------------

    async def add_people(self) -> None:
        """Everyone the corpus acts as. All may Mention Everyone, so only allowed_mentions stops a ping."""
        emulator, guild = self.emulator, self.community.guild
        emulator.world.roles[guild.id].permissions |= permission_bits("mention_everyone")
        self.people |= {"alice": self.community.alice, "bob": self.community.bob}
        names = {"mallory": "mallory", "rtl": "\u202eecila", "invisible": "\u200b",
                 "surrogate": "bad\udc80name", "longname": "x" * 100, "checker": "checker"}  # fmt: skip
        for key, name in names.items():
            self.people[key] = await emulator.add_user(name)
            await emulator.add_member(guild, self.people[key])
        fake = await emulator.add_role(guild, "Admin")  # a role called Admin, with no permissions
        self.people["fake admin"] = await emulator.add_user("Admin")
        await emulator.add_member(guild, self.people["fake admin"], roles=[fake])
        self.people["other bot"] = await emulator.add_user("otherbot", bot=True)
        await emulator.add_member(guild, self.people["other bot"])
        self.people["stranger"] = await emulator.add_user("stranger")  # not in the guild
        admin_role = next(r for r in emulator.world.roles.values() if r.name == "alice permissions")
        bot_role = next(r for r in emulator.world.roles.values() if r.managed and r.guild_id == guild.id)
        self.ids = {"bot": str(emulator.bot_user.id), "everyone_role": str(guild.id),
                    "channel": str(self.channel.id), "admin_role": str(admin_role.id),
                    "bot_role": str(bot_role.id)}  # fmt: skip
        self.ids |= {key: str(user.id) for key, user in self.people.items()}

    async def add_targets(self) -> None:
        """A warm-up answer, a notice, another bot's message, a slash-command reply and an answer in a DM."""
        alice = self.people["alice"]
        question = await self._send(Post("Warm up: what is the capital of France?"), alice)
        self.targets["question"] = question
        self.targets["answer"] = await self.wait_answered(question)
        self.targets["first answer part"] = self.emulator.message(
            self.generation_for(question.id).discord_message_ids[0]
        )
        blank = await self._send(Post(""), alice, expect="blank", stored="")
        self.targets["notice"] = await self.wait_notice(blank)
        other = self.people["other bot"]
        self.targets["other bot"] = await self.emulator.send_message(
            self.channel, other, "beep", mentions_bot=True
        )
        interaction = await self.emulator.invoke_slash(
            self.people["bob"], self.community.guild, self.channel, "status"
        )
        [self.targets["slash reply"]] = await self.emulator.wait_for_interaction_response(
            interaction, timeout=10
        )
        dm_question = await self._send(Post("hello from a DM", dm=True, mention=False), self.people["bob"])
        self.targets["dm answer"] = await self.wait_answered(dm_question)

    # -- running cases --------------------------------------------------------------------------------

    async def run(self, case: Case) -> None:
        act = case.act
        if isinstance(act, Post):
            message = await self._send(act, self.people[act.author], expect=case.expect)
            self.sent[case.name] = message
            if case.expect == "answered":
                await self.wait_answered(message)
            if case.expect in ("blank", "declined") or act.notice:
                await self.wait_notice(message)
        elif isinstance(act, During):
            await self._during(case, act)
        elif isinstance(act, React):
            await self._react(case, act)
        elif isinstance(act, Slash):
            await self._slash(case, act)
        elif isinstance(act, Correct | Menu):
            await self._correct(case, act)
        else:
            raise TypeError(f"unknown action {act!r}")

    def fill(self, value: Any) -> Any:
        """Put the run's ids in for ⟨name⟩ placeholders, in text and in raw option payloads."""
        if isinstance(value, str):
            return PLACEHOLDER.sub(lambda m: self.ids[m.group(1)], value)
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        if isinstance(value, tuple | list):
            return type(value)(self.fill(v) for v in value)
        return value

    async def _send(
        self, act: Post | During, author: User, *, expect: str = "answered", stored: str | None = None
    ) -> Message:
        """Post the message; note what the store must then hold for it, and whether it must be answered."""
        text = self.fill(act.text)
        mention = act.mention and not getattr(act, "dm", False)
        if isinstance(act, Post) and act.repeat:  # up to the limit, counting the mention the emulator adds
            repeat, tail = self.fill(act.repeat), self.fill(act.tail)
            room = NITRO_LIMIT - len(text) - len(tail) - (len(f"<@{self.ids['bot']}> ") if mention else 0)
            text += (repeat * (room // len(repeat) + 1))[:room] + tail
        channel = await self.emulator.open_dm(author) if getattr(act, "dm", False) else self.channel
        files = [(self.fill(name), data) for name, data in getattr(act, "files", ())]
        message = await self.emulator.send_message(
            channel, author, text, mentions_bot=mention, attachments=files, ping_reply=False,
            reply_to=self.targets["first answer part"] if act.reply else None,
        )  # fmt: skip
        if expect != "ignored":
            given = stored if stored is not None else getattr(act, "stored", None)
            if given is None and not files:
                given = text.strip()
            self.expected_rows[message.id] = self.fill(given) if given is not None else None  # None: any
            if expect == "answered":
                self.answered.add(message.id)
        return message

    async def _during(self, case: Case, act: During) -> None:
        question = await self._send(act, self.people["alice"], expect=case.expect)
        self.sent[case.name] = question
        if act.mention or act.reply:  # a question: act once its answer has started to show
            first = await self.emulator.wait_for_bot_message(
                question.channel_id, lambda m: m.reference_id == question.id, timeout=ANSWER_TIMEOUT
            )
        else:  # not a question: edit once the bot has seen it (an edit that overtakes it is seen instead)
            await self.run_sentinel()
        new_text = self.fill(act.new_text)
        if act.act.startswith("edit"):
            for index in range(10 if act.act == "edit 10 times" else 1):
                await self.emulator.edit_message(question, f"{new_text} {index}" if index else new_text)
        if act.act in ("delete question", "edit then delete"):
            await self.emulator.delete_message(question)
        if act.act == "delete answer":
            await self.emulator.delete_message(first, by=self.emulator.world.owner)
        if case.expect == "answered":
            await self.wait_answered(question)
        elif case.expect == "abandoned":
            await poll(lambda: self.server.streams[-1].cancelled, f"{case.name}: the answer cancelled")

    async def _react(self, case: Case, act: React) -> None:
        if act.rater == "other bot":
            rater = self.people["other bot"]
        elif act.target == "dm answer":
            rater = self.people["bob"]  # only the two ends of a DM can react in it
        else:
            rater = await self.emulator.add_user(f"rater{len(self.sent)}")
            await self.emulator.add_member(self.community.guild, rater)
        target = self.targets[act.target]
        self.sent[case.name] = rater
        for op, emoji in act.steps:
            if op == "+":
                await self.emulator.add_reaction(rater, target.channel_id, target, emoji)
            elif op == "-":
                await self.emulator.remove_reaction(rater, target.channel_id, target, emoji)
            else:
                await self.emulator.redeliver("MESSAGE_REACTION_ADD", lambda d: d["user_id"] == str(rater.id))

    async def _slash(self, case: Case, act: Slash) -> None:
        user, guild = self.people[act.user], self.community.guild
        if act.raw is not None:
            raw = [self.fill(option) for option in act.raw]
            interaction = await self.emulator.invoke_slash(
                user, guild, self.channel, act.command, raw_options=raw
            )
        else:
            options = {name: self.fill(value) for name, value in act.options}
            interaction = await self.emulator.invoke_slash(user, guild, self.channel, act.command, options)
        self.sent[case.name] = await self.emulator.wait_for_interaction_response(interaction, timeout=10)

    async def _correct(self, case: Case, act: Correct | Menu) -> None:
        target = self.targets["answer" if isinstance(act, Correct) else act.target]
        menu = "Suggest a better answer"
        opened = await self.emulator.invoke_message_command(
            self.people["bob"], target.channel_id, target, menu
        )
        if isinstance(act, Menu):
            self.sent[case.name] = (opened, await self.emulator.wait_for_interaction_response(opened))
            return
        await self.emulator.wait_for_modal(opened)
        submitted = await self.emulator.submit_modal(opened, {"better": self.fill(act.text)})
        self.sent[case.name] = (submitted, await self.emulator.wait_for_interaction_response(submitted))

    # -- waiting --------------------------------------------------------------------------------------

    def generation_for(self, discord_id: int) -> Generation | None:
        """The answer (not a 🔁 alternative) to the message with this Discord id."""
        query = (
            select(Generation)
            .join(Row, col(Row.id) == col(Generation.request_message_id))
            .where(Row.discord_id == discord_id, col(Generation.regenerates).is_(None))
        )
        return rows(self.database, lambda s: s.exec(query).first())

    async def wait_answered(self, question: Message) -> Message:
        """The last part of the answer to `question`, once its feedback reactions are on (added last).

        The bot records the answer before it reacts, so the store is read only when a 🔁 of the bot's
        appears in the channel, not polled: polling would slow the bot it shares the event loop with.
        """
        bot, emulator, reacted = self.emulator.bot_user.id, self.emulator, [-1]

        def finished() -> Message | None:
            count = sum(bot in m.reactors("🔁") for m in emulator.bot_messages(question.channel_id))
            if count == reacted[0]:
                return None
            reacted[0] = count
            generation = self.generation_for(question.id)
            if generation is None or not generation.discord_message_ids:
                return None
            last = emulator.message(generation.discord_message_ids[-1])
            return last if bot in last.reactors("🔁") else None

        return await emulator.wait_for(finished, ANSWER_TIMEOUT, what=f"an answer to {question.id}")

    async def wait_notice(self, question: Message) -> Message:
        return await self.emulator.wait_for_bot_message(
            question.channel_id,
            lambda m: m.reference_id == question.id and not m.reactions,
            timeout=ANSWER_TIMEOUT,
        )

    async def run_sentinel(self) -> None:
        """A plain question from a plain member, which must still get its answer."""
        question = await self._send(Post("What is the capital of France?"), self.people["checker"])
        await self.wait_answered(question)

    async def settle(self) -> None:
        """Wait until every reaction so far was handled and every 🔁 answered."""
        checker, answer = self.people["checker"], self.targets["answer"]
        await self.emulator.add_reaction(checker, self.channel, answer, "👍")
        await poll(lambda: self.votes_of(checker.id), "the checker's vote, queued behind every other")
        await self.emulator.remove_reaction(checker, self.channel, answer, "👍")
        await poll(lambda: not [v for v in self.votes_of(checker.id) if v.removed_at is None], "a retraction")
        reacts = [c.act for c in self.cases if isinstance(c.act, React)]
        wanted, notices = sum(a.regenerations for a in reacts), sum(a.notices for a in reacts)
        sent = lambda: [g for g in self.regenerated() if g.discord_message_ids]  # noqa: E731
        await poll(lambda: len(sent()) >= wanted, f"{wanted} 🔁 answers")
        await poll(lambda: len(self.regenerate_notices()) >= notices, f"{notices} notices")
        for answer_id in [g.discord_message_ids[-1] for g in sent()]:
            await self.emulator.wait_for(
                lambda i=answer_id: self.emulator.bot_user.id in self.emulator.message(i).reactors("🔁")
            )

    def votes_of(self, rater_id: int) -> list[Feedback]:
        return rows(
            self.database, lambda s: list(s.exec(select(Feedback).where(Feedback.rater_id == rater_id)))
        )

    def regenerated(self) -> list[Generation]:
        query = select(Generation).where(col(Generation.regenerates).is_not(None))
        return rows(self.database, lambda s: list(s.exec(query)))

    def regenerations(self) -> int:
        return len(self.regenerated())

    def regenerate_notices(self) -> list[Message]:
        return [
            m for m in self.emulator.bot_messages(self.channel) if m.content.startswith("Another answer in")
        ]
