"""Load on the bot: many simulated people in many channels of the Discord emulator, and a record of it.

Each person loops at a bounded pace: asks the bot (a mention), replies to its answers (a reply chain), votes
👍/👎, switches and takes back votes, asks for another answer (🔁), and runs slash commands. They wait for the
bot before asking again and honour "try again in N s". The driver runs on the emulator's own loop (see
`DiscordEmulator.start_in_thread`), so the bot's loop carries only the bot. `LoadRecord` keeps what was sent;
sim/load_audit.py reads what Discord shows afterwards and holds both against the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Literal

from sim.discord_emulator import DiscordEmulator, Message

AskKind = Literal["mention", "reply", "regenerate"]
Outcome = Literal["answer", "busy", "rate_limited", "failed"]

UP, DOWN, REGENERATE = "👍", "👎", "🔁"
# The openings of the bot's replies that are not answers (bot/answering.py, bot/feedback.py): what they mean.
NOTICES: tuple[tuple[str, Outcome], ...] = (
    ("You're asking faster than I can think!", "rate_limited"),
    ("Another answer in ", "rate_limited"),
    ("I'm swamped right now", "busy"),
    ("I'm already answering as many questions as I can in this channel", "busy"),
    ("Sorry, something went wrong while I was answering", "failed"),
    ("Sorry, I couldn't read this conversation", "failed"),
    ("Yes? Ask me something", "failed"),  # the load never sends an empty question
)
WAIT = re.compile(r"in (\d+) (s|min)\b")
COMMANDS = ("status", "stats", "optout", "optin")


def notice_outcome(content: str) -> Outcome | None:
    """What a bot reply that is not an answer means; None for an answer (or one still being written)."""
    return next((outcome for opening, outcome in NOTICES if content.startswith(opening)), None)


def notice_wait_s(content: str) -> float:
    """The wait a rate-limit notice asks for ("try again in 12 s", "in 2 min"); 0 when it names none."""
    found = WAIT.search(content)
    if found is None:
        return 0.0
    return float(found.group(1)) * (60 if found.group(2) == "min" else 1)


def questions() -> list[str]:
    """The simulated community's training prompts."""
    text = resources.files("sim").joinpath("data/prompts_train.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class LoadConfig:
    """How many people, where, for how long, and how they behave."""

    users: int = 50
    channels: int = 10
    seconds: float = 60.0  # the load runs at least this long...
    max_seconds: float | None = None  # ...and, while `run(until=...)` is not yet true, up to this long
    seed: int = 0
    pause_s: tuple[float, float] = (1.0, 5.0)  # a person's pause between two things they do
    answer_timeout_s: float = 60.0  # how long a person waits for the bot before moving on
    # relative weights of what a person does next
    weights: tuple[tuple[str, float], ...] = (
        ("ask", 3.0),
        ("reply", 2.0),
        ("vote", 4.0),
        ("unvote", 1.0),
        ("regenerate", 1.0),
        ("command", 0.5),
    )


@dataclass(frozen=True)
class Population:
    """The guild, channels and people the load runs in (ids on the emulator)."""

    guild_id: int
    channel_ids: list[int]
    user_ids: list[int]


async def populate(emulator: DiscordEmulator, users: int, channels: int) -> Population:
    """A guild with `channels` text channels and `users` members; call it on the emulator's loop."""
    guild = await emulator.add_guild("Load")
    channel_ids = [(await emulator.add_channel(guild, f"chat-{i}")).id for i in range(channels)]
    user_ids = []
    for i in range(users):
        user = await emulator.add_user(f"person-{i}")
        await emulator.add_member(guild, user)
        user_ids.append(user.id)
    return Population(guild.id, channel_ids, user_ids)


@dataclass
class Ask:
    """One request for an answer: a mention, a reply to an answer, or a 🔁 on an answer (`message_id`)."""

    kind: AskKind
    user_id: int
    channel_id: int
    message_id: int  # the question; for 🔁 the answer asked again for (the bot's reply references it)
    sent_at: datetime
    outcome: Outcome | None = None  # as the person saw it; None when they gave up waiting


@dataclass(frozen=True)
class Command:
    """One slash command a person ran."""

    name: str
    user_id: int
    interaction_id: int


@dataclass
class LoadRecord:
    """Everything the people sent, in order, and their own view of the votes they hold."""

    population: Population
    asks: list[Ask] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    answers: dict[int, Ask] = field(default_factory=dict)  # the bot's answer message -> the ask it answered
    # (user, answer) -> the vote they hold there: +1, -1, or 0 once taken back
    votes: dict[tuple[int, int], int] = field(default_factory=dict)
    opted_out: dict[int, bool] = field(default_factory=dict)  # the last /optout or /optin of each person
    votes_added: int = 0  # 👍/👎 reactions put on answers (a switch is one added and one removed)
    votes_removed: int = 0
    seconds: float = 0.0


class LoadDriver:
    """Runs the people of `population` on the emulator's loop: `emulator.call(driver.run(), timeout)`."""

    def __init__(self, emulator: DiscordEmulator, population: Population, config: LoadConfig) -> None:
        self.emulator = emulator
        self.config = config
        self.record = LoadRecord(population)
        self.bot_id = emulator.bot_user.id
        self.prompts = questions()
        self.replies: dict[int, list[Message]] = {}  # request id -> the bot's messages replying to it
        self._seen = 0  # the newest message id indexed
        self._quiet_until: dict[int, float] = {}  # person -> when they may ask again (rate limited)
        self._waiting: dict[int, tuple[Ask, asyncio.Future[None]]] = {}  # request id -> its ask
        self._stop_at = float("inf")

    async def run(self, until: Callable[[], bool] | None = None) -> LoadRecord:
        """Run `config.seconds`, then on while `until()` is false (up to `config.max_seconds`)."""
        started = time.monotonic()
        indexer = asyncio.create_task(self._index_forever())
        stopper = asyncio.create_task(self._stop_when(started, until))
        channels = self.record.population.channel_ids
        people = [
            self._person(user, channels[i % len(channels)], random.Random(f"{self.config.seed}-{i}"))
            for i, user in enumerate(self.record.population.user_ids)
        ]
        try:
            await asyncio.gather(*people)
        finally:
            for task in (indexer, stopper):
                task.cancel()
        self.record.seconds = time.monotonic() - started
        return self.record

    async def _stop_when(self, started: float, until: Callable[[], bool] | None) -> None:
        hard = started + (self.config.max_seconds or self.config.seconds)
        await asyncio.sleep(self.config.seconds)
        while until is not None and not until() and time.monotonic() < hard:
            await asyncio.sleep(0.2)
        self._stop_at = time.monotonic()

    def _stopping(self) -> bool:
        return time.monotonic() >= self._stop_at

    async def _person(self, user: int, channel: int, rng: random.Random) -> None:
        names, weights = zip(*self.config.weights, strict=True)
        while True:
            await asyncio.sleep(rng.uniform(*self.config.pause_s))
            if self._stopping():
                return
            action = rng.choices(names, weights)[0]
            await getattr(self, f"_{action}")(user, channel, rng)

    # -- what a person does -----------------------------------------------------------------------------

    async def _ask(self, user: int, channel: int, rng: random.Random) -> None:
        if self._quiet(user):
            return
        question = await self.emulator.send_message(
            channel, user, rng.choice(self.prompts), mentions_bot=True
        )
        await self._wait_for_reply(Ask("mention", user, channel, question.id, question.created_at))

    async def _reply(self, user: int, channel: int, rng: random.Random) -> None:
        answer = self._pick_answer(user, channel, rng, own=True)
        if answer is None or self._quiet(user):
            return await self._ask(user, channel, rng)
        text = rng.choice(("Why?", "Tell me more.", "Are you sure?", "Thanks! And then?", "Shorter please."))
        message = await self.emulator.send_message(channel, user, text, reply_to=answer)
        await self._wait_for_reply(Ask("reply", user, channel, message.id, message.created_at))

    async def _vote(self, user: int, channel: int, rng: random.Random) -> None:
        answer = self._pick_answer(user, channel, rng, own=False)
        if answer is None:
            return
        held = self.record.votes.get((user, answer), 0)
        value = -held if held else rng.choice((1, -1))  # a held vote is switched
        await self.emulator.add_reaction(user, channel, answer, UP if value == 1 else DOWN)
        self.record.votes_added += 1
        if held:  # the new one first, then the old one off: un-👍 after 👎 must keep the 👎
            await self.emulator.remove_reaction(user, channel, answer, UP if held == 1 else DOWN)
            self.record.votes_removed += 1
        self.record.votes[(user, answer)] = value

    async def _unvote(self, user: int, channel: int, rng: random.Random) -> None:
        held = [(answer, v) for (u, answer), v in self.record.votes.items() if u == user and v]
        if not held:
            return await self._vote(user, channel, rng)
        answer, value = rng.choice(held)
        await self.emulator.remove_reaction(user, channel, answer, UP if value == 1 else DOWN)
        self.record.votes_removed += 1
        self.record.votes[(user, answer)] = 0

    async def _regenerate(self, user: int, channel: int, rng: random.Random) -> None:
        asked = {a.message_id for a in self.record.asks if a.kind == "regenerate"}
        mine = [
            answer
            for answer, ask in self.record.answers.items()
            if ask.user_id == user and ask.channel_id == channel and answer not in asked
        ]
        if not mine or self._quiet(user):
            return await self._ask(user, channel, rng)
        answer = rng.choice(mine[-5:])
        await self.emulator.add_reaction(user, channel, answer, REGENERATE)
        await self._wait_for_reply(Ask("regenerate", user, channel, answer, datetime.now(UTC)))

    async def _command(self, user: int, channel: int, rng: random.Random) -> None:
        name = rng.choice(COMMANDS)
        guild = self.record.population.guild_id
        interaction = await self.emulator.invoke_slash(user, guild, channel, name)
        self.record.commands.append(Command(name, user, interaction.id))
        if name in ("optout", "optin"):
            self.record.opted_out[user] = name == "optout"
        with contextlib.suppress(TimeoutError):  # the audit looks again at the end
            await self.emulator.wait_for_interaction_response(interaction, self.config.answer_timeout_s)

    # -- helpers --------------------------------------------------------------------------------------

    def _quiet(self, user: int) -> bool:
        """Whether the bot told this person to wait, and the wait is not over."""
        return time.monotonic() < self._quiet_until.get(user, 0.0)

    def _pick_answer(self, user: int, channel: int, rng: random.Random, *, own: bool) -> int | None:
        """A recent finished answer in the channel: the person's own (`own`), or anyone's."""
        recent = [
            answer
            for answer, ask in reversed(self.record.answers.items())
            if ask.channel_id == channel and (not own or ask.user_id == user)
        ][:10]
        return rng.choice(recent) if recent else None

    async def _wait_for_reply(self, ask: Ask) -> None:
        """Wait for the bot's reply to `ask`: a notice, or an answer it has finished (its 🔁 is there)."""
        self.record.asks.append(ask)
        settled = asyncio.get_running_loop().create_future()
        self._waiting[ask.message_id] = (ask, settled)
        try:
            await asyncio.wait_for(settled, self.config.answer_timeout_s)
        except TimeoutError:
            pass  # the audit looks again at the end; the person moves on
        finally:
            self._waiting.pop(ask.message_id, None)

    async def _index_forever(self) -> None:
        """One watcher for everyone waiting (not one poller per person): the driver must stay light."""
        while True:
            self.index_new_messages()
            for ask, settled in list(self._waiting.values()):
                if not settled.done() and self._settle(ask):
                    settled.set_result(None)
            await asyncio.sleep(0.05)

    def _settle(self, ask: Ask) -> bool:
        """Note the outcome once the bot's reply is final; False while there is none yet."""
        replies = self.replies.get(ask.message_id)
        if not replies:
            return False
        reply = replies[0]
        ask.outcome = notice_outcome(reply.content)
        if ask.outcome == "rate_limited":
            self._quiet_until[ask.user_id] = time.monotonic() + notice_wait_s(reply.content) + 1
        elif ask.outcome is None and self.bot_id in reply.reactors(REGENERATE):
            ask.outcome = "answer"
            self.record.answers[reply.id] = ask
        return ask.outcome is not None

    def index_new_messages(self) -> None:
        """Index the bot's replies posted since the last look (message ids only grow)."""
        fresh = []
        for message in reversed(self.emulator.world.messages.values()):
            if message.id <= self._seen:
                break
            fresh.append(message)
        if fresh:
            self._seen = fresh[0].id
        for message in reversed(fresh):
            if message.author_id == self.bot_id and message.reference_id is not None:
                self.replies.setdefault(message.reference_id, []).append(message)
