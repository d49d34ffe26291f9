"""A scripted community on the Discord emulator: members ask, vote with a judge, press 🔁, write corrections.

Only the members look at the judge: they ask through the emulator like people would, read the bot's answer
off Discord, and react with the judge's verdict (👍 for +1, 👎 for -1, nothing for 0). On a 👎 an asker
sometimes presses 🔁 for another answer, and sometimes opens "Suggest a better answer" and submits the
corrector's text. An admin asks for `/retrain`. Exams ask held-out prompts and score the answers privately:
no vote, so held-out prompts never become training data.
"""

from __future__ import annotations

import asyncio
import importlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sim.discord_emulator import Channel, DiscordEmulator, Guild, Interaction, Message, Role, User

Judge = Callable[[str, str], int]  # (prompt, answer) -> +1, -1 or 0
Corrector = Callable[[str, str], str]  # (prompt, answer) -> a better answer

VOTE_EMOJI = {1: "👍", -1: "👎"}
REGENERATE, CORRECT = "🔁", "Suggest a better answer"
# a line of /knowledge review: "**#12** correction by member-3: Thursday, 19:00 (asked: When is study night?)"
_PENDING_LINE = re.compile(
    r"^\*\*#(?P<id>\d+)\*\* [^:\n]*: (?P<answer>.*) \(asked: (?P<question>.*)\)$", re.MULTILINE
)
SOURCES_LINE = "-# Sources:"  # the bot's footer naming the passages of its open book an answer was given
# Every "come back later" notice of the bot asks to try or ask again; an answer never carries reactions.
_BUSY = re.compile(r"\b(ask|try) again\b", re.IGNORECASE)
BUSY_RETRIES = 3


def load_callable(spec: str, what: str) -> Callable[..., object]:
    """Import `module:function` from the current PYTHONPATH, with a message that says what is wrong."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ValueError(
            f"{what} {spec!r} is not of the form module:function (e.g. sim.judges:signoff_judge)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{what} {spec!r}: cannot import {module_name!r} ({exc})") from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"{what} {spec!r}: {module_name!r} has no function {name!r}")
    return function


def read_prompts(path: Path) -> list[str]:
    """One prompt per non-empty line; lines starting with # are comments."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"{path} holds no prompts (one per line)")
    return prompts


@dataclass(frozen=True)
class Behaviour:
    """How the members act: who votes besides the asker, how often they press 🔁 or write a correction."""

    vote_share: float = 0.3  # chance that each other member of the channel also votes on an answer
    regenerate_share: float = 0.3  # chance that an asker who dislikes an answer presses 🔁
    correct_share: float = 0.6  # chance that an asker who dislikes an answer submits a correction
    answer_timeout_s: float = 600.0  # a slow CPU with a long queue is slow, not broken


@dataclass
class Activity:
    """What the members did in one study session, and what reached Discord."""

    questions: list[int] = field(default_factory=list)  # Discord ids of every question posted
    answers: int = 0
    busy: int = 0  # "try again later" notices (the member waited and asked again)
    unanswered: int = 0
    votes: dict[tuple[int, int], int] = field(default_factory=dict)  # (member, bot message) -> +1/-1
    regenerations: int = 0
    corrections: int = 0

    @property
    def up_votes(self) -> int:
        return sum(1 for value in self.votes.values() if value > 0)

    @property
    def down_votes(self) -> int:
        return sum(1 for value in self.votes.values() if value < 0)


@dataclass(frozen=True)
class Graded:
    """One exam question, the bot's answer and the judge's verdict."""

    prompt: str
    answer: str | None
    verdict: int


class Community:
    """Members in a few channels of one guild, plus an admin; everything they do goes through the emulator."""

    def __init__(
        self,
        emulator: DiscordEmulator,
        guild: Guild,
        seats: list[tuple[User, Channel]],
        admin: User,
        judge: Judge,
        corrector: Corrector | None,
        *,
        seed: int = 0,
        behaviour: Behaviour | None = None,
        trusted_role: Role | None = None,
    ) -> None:
        self.emulator = emulator
        self.guild = guild
        self.seats = seats  # each member asks in their own seat's channel
        self.admin = admin
        self.trusted_role = trusted_role  # the moderators' role, held by the first members, if any
        self.judge = judge
        self.corrector = corrector
        self.rng = random.Random(seed)
        self.behaviour = behaviour or Behaviour()

    @classmethod
    async def gather(
        cls,
        emulator: DiscordEmulator,
        *,
        members: int,
        channels: int,
        judge: Judge,
        corrector: Corrector | None,
        seed: int = 0,
        behaviour: Behaviour | None = None,
        name: str = "Study Hall",
        trusted: int = 0,
    ) -> Community:
        """A guild `name` with `channels` channels, `members` members spread over them, and an admin; the
        first `trusted` members hold a "moderators" role (whose corrections the bot may trust)."""
        admin = await emulator.add_user("admin")
        guild = await emulator.add_guild(name, owner=admin)
        rooms = [await emulator.add_channel(guild, f"study-{i + 1}") for i in range(max(1, channels))]
        await emulator.add_member(guild, admin, permissions=["manage_guild"])
        moderators = await emulator.add_role(guild, "moderators") if trusted > 0 else None
        seats = []
        for i in range(members):
            member = await emulator.add_user(f"member-{i + 1}")
            roles = [moderators] if moderators is not None and i < trusted else []
            await emulator.add_member(guild, member, roles=roles)
            seats.append((member, rooms[i % len(rooms)]))
        return cls(
            emulator,
            guild,
            seats,
            admin,
            judge,
            corrector,
            seed=seed,
            behaviour=behaviour,
            trusted_role=moderators,
        )

    @property
    def channels(self) -> list[Channel]:
        return list({channel.id: channel for _, channel in self.seats}.values())

    async def study(self, prompts: Sequence[str], on_answer: Callable[[], None] | None = None) -> Activity:
        """Each member asks their share of `prompts` one after another; all members at once."""
        activity = Activity()
        queues: list[list[str]] = [[] for _ in self.seats]
        for i, prompt in enumerate(prompts):
            queues[i % len(self.seats)].append(prompt)

        async def member_session(seat: int) -> None:
            for prompt in queues[seat]:
                await self._study_one(seat, prompt, activity)
                if on_answer is not None:
                    on_answer()

        await asyncio.gather(*(member_session(seat) for seat in range(len(self.seats))))
        return activity

    async def exam(
        self,
        prompts: Sequence[str],
        on_answer: Callable[[], None] | None = None,
        activity: Activity | None = None,
    ) -> list[Graded]:
        """Ask every prompt (members take turns, all at once) and grade the answers without voting."""
        graded: list[Graded | None] = [None] * len(prompts)
        scratch = activity if activity is not None else Activity()

        async def member_exam(seat: int) -> None:
            member, channel = self.seats[seat]
            for index in range(seat, len(prompts), len(self.seats)):
                answer = await self._ask(member, channel, prompts[index], scratch)
                text = answer_text(answer) if answer else None
                verdict = self.judge(prompts[index], text) if text is not None else -1
                graded[index] = Graded(prompts[index], text, verdict)
                if on_answer is not None:
                    on_answer()

        await asyncio.gather(*(member_exam(seat) for seat in range(len(self.seats))))
        return [g for g in graded if g is not None]

    async def request_retrain(self) -> Interaction:
        """The admin runs /retrain in the first channel."""
        return await self.emulator.invoke_slash(self.admin, self.guild, self.channels[0], "retrain")

    async def set_instructions(self, text: str) -> str:
        """The admin gives the bot the server's instructions (/instructions set); the bot's reply."""
        asked = await self.emulator.invoke_slash(
            self.admin, self.guild, self.channels[0], "instructions", {"text": text}, "set"
        )
        [reply] = await self.emulator.wait_for_interaction_response(
            asked, timeout=self.behaviour.answer_timeout_s
        )
        return reply.content

    async def review_knowledge(self) -> tuple[int, int]:
        """The admin goes through /knowledge review: a correction the judge finds right joins the open book,
        any other is dropped (an admin knows the server's facts). Returns (accepted, dropped)."""
        accepted = dropped = 0
        while True:
            asked = await self.emulator.invoke_slash(
                self.admin, self.guild, self.channels[0], "knowledge", None, "review"
            )
            [listing] = await self.emulator.wait_for_interaction_response(
                asked, timeout=self.behaviour.answer_timeout_s
            )
            pending = [
                (int(match["id"]), _unescaped(match["question"]), _unescaped(match["answer"]))
                for match in _PENDING_LINE.finditer(listing.content)
            ]
            if not pending:
                return accepted, dropped
            for passage_id, question, answer in pending:
                accept = self.judge(question, answer) > 0
                action = "accept" if accept else "drop"
                clicked = await self.emulator.click_component(
                    self.admin, listing, f"knowledge:{action}:{passage_id}"
                )
                await self.emulator.wait_for(
                    _decided(clicked, listing, passage_id), timeout=self.behaviour.answer_timeout_s
                )
                accepted, dropped = accepted + accept, dropped + (not accept)

    async def _study_one(self, seat: int, prompt: str, activity: Activity) -> None:
        member, channel = self.seats[seat]
        answer = await self._ask(member, channel, prompt, activity)
        if answer is None:
            return
        verdict = await self._react(seat, prompt, answer, activity)
        if verdict >= 0:
            return
        if self.rng.random() < self.behaviour.regenerate_share:
            again = await self._regenerate(member, channel, answer, activity)
            if again is not None:
                await self._react(seat, prompt, again, activity)
        if self.corrector is not None and self.rng.random() < self.behaviour.correct_share:
            await self._correct(member, channel, prompt, answer, activity)

    async def _ask(
        self, member: User, channel: Channel, prompt: str, activity: Activity
    ) -> list[Message] | None:
        """Post a question mentioning the bot; on a busy notice wait as told and ask again."""
        for attempt in range(BUSY_RETRIES + 1):
            question = await self.emulator.send_message(channel, member, prompt, mentions_bot=True)
            activity.questions.append(question.id)
            answer = await self._wait_for_answer(channel, question)
            if answer is not None and not _is_busy(answer):
                activity.answers += 1
                return answer
            if answer is not None:
                activity.busy += 1
                await asyncio.sleep(2.0 * (attempt + 1))
        activity.unanswered += 1
        return None

    async def _regenerate(
        self, member: User, channel: Channel, answer: list[Message], activity: Activity
    ) -> list[Message] | None:
        await self.emulator.add_reaction(member, channel, answer[-1], REGENERATE)
        activity.regenerations += 1
        again = await self._wait_for_answer(channel, answer[-1])
        if again is None or _is_busy(again):
            return None
        activity.answers += 1
        return again

    async def _react(self, seat: int, prompt: str, answer: list[Message], activity: Activity) -> int:
        """The asker votes with the judge's verdict; other members of the channel sometimes do too."""
        asker, channel = self.seats[seat]
        text = answer_text(answer)
        verdict = self.judge(prompt, text)
        voters = [asker] + [
            member
            for member, room in self.seats
            if room.id == channel.id
            and member.id != asker.id
            and self.rng.random() < self.behaviour.vote_share
        ]
        if verdict not in VOTE_EMOJI:
            return verdict
        for voter in voters:
            await self.emulator.add_reaction(voter, channel, answer[-1], VOTE_EMOJI[verdict])
            activity.votes[(voter.id, answer[-1].id)] = verdict
        return verdict

    async def _correct(
        self, member: User, channel: Channel, prompt: str, answer: list[Message], activity: Activity
    ) -> None:
        assert self.corrector is not None
        better = self.corrector(prompt, answer_text(answer))
        opened = await self.emulator.invoke_message_command(member, channel, answer[-1], CORRECT)
        await self.emulator.wait_for_modal(opened, timeout=self.behaviour.answer_timeout_s)
        submitted = await self.emulator.submit_modal(opened, {"better": better[:4000]})
        activity.corrections += 1  # submitted: from here on it is the bot's to record
        await self.emulator.wait_for_interaction_response(submitted, timeout=self.behaviour.answer_timeout_s)

    async def _wait_for_answer(self, channel: Channel, asked: Message) -> list[Message] | None:
        """The bot's complete reply to `asked` (its last part carries the feedback reactions), or a notice."""

        def complete() -> list[Message] | None:
            found = reply_to(self.emulator, channel, asked)
            if found and (found[-1].reactors(REGENERATE) or _is_busy(found)):
                return found
            return None

        try:
            return await self.emulator.wait_for(
                complete, timeout=self.behaviour.answer_timeout_s, what=f"the answer to {asked.id}"
            )
        except TimeoutError:
            return None


def reply_to(emulator: DiscordEmulator, channel: Channel, asked: Message) -> list[Message]:
    """The bot's messages answering `asked`: the reply itself, then its continuation parts, if any."""
    messages = emulator.bot_messages(channel)
    first = next((i for i, m in enumerate(messages) if m.reference_id == asked.id), None)
    if first is None:
        return []
    parts = [messages[first]]
    for message in messages[first + 1 :]:  # a long answer continues in unreferenced messages
        if parts[-1].reactors(REGENERATE) or message.reference_id is not None:
            break
        parts.append(message)
    return parts


def _decided(clicked: Interaction, listing: Message, passage_id: int) -> Callable[[], bool]:
    """Whether the bot has answered the click and put what became of the passage in place of its line."""
    line = f"**#{passage_id}**"
    return lambda: clicked.acknowledged and line not in listing.content


def _unescaped(text: str) -> str:
    """Text as a reader sees it in Discord: the backslashes that escape markdown gone."""
    return re.sub(r"\\(.)", r"\1", text).strip()


def answer_text(answer: list[Message]) -> str:
    """What the bot answered, as a reader takes it in: its parts, without the small sources line under it."""
    lines = "\n".join(part.content for part in answer).split("\n")
    return "\n".join(line for line in lines if not line.startswith(SOURCES_LINE))


def _is_busy(answer: list[Message]) -> bool:
    return len(answer) == 1 and not answer[0].reactions and bool(_BUSY.search(answer[0].content))
