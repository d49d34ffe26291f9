"""The conversation: when to answer, building the prompt, streaming the answer, recording it."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import discord
from discord.ext import commands

from bot.access import ChannelSlots, is_allowed, seconds_text
from bot.conversation import (
    Turn,
    channel_chain,
    clean_text,
    history,
    is_answer_request,
    message_text,
    system_prompt,
    to_chat,
    to_turns,
)
from bot.dependencies import AnyBot, CogDependencies
from bot.grounding import ground, without_notes
from bot.replies import AnswerAbandoned, EditPace, ReplyWriter, bot_permissions, clip, send_reply
from bot.storage import Store
from engine.backend import Server
from engine.engine import Completion
from engine.loading import EngineError, EngineUnavailable
from engine.prompting import ChatMessage
from engine.serving import Busy, ReplyStream
from store import crud
from store.models import Generation
from store.scopes import GLOBAL, scope_for
from store.settings import Settings

logger = logging.getLogger(__name__)

FEEDBACK_EMOJIS = ("👍", "👎", "🔁")
# What a person writes (not joins, pins, boosts): the only messages listen mode answers.
ANSWERABLE_TYPES = (discord.MessageType.default, discord.MessageType.reply)


@dataclass(frozen=True)
class Request:
    """Who asked for an answer, where, and the prompt."""

    chat: list[ChatMessage]
    channel: discord.abc.Messageable
    reference: discord.Message | discord.MessageReference | None
    user_id: int
    guild_id: int | None
    channel_id: int
    request_message_id: int | None = None  # our Message row of the question
    regenerates: int | None = None
    temperature: float | None = None
    scope: str = GLOBAL  # whose adapter answers, and whose data the answer becomes
    instructions_version: str | None = None  # the community's instructions in the prompt ("s3+c1")
    passage_ids: tuple[int, ...] = ()  # the open book's passages in the prompt
    footer: str | None = None  # the sources line shown under the answer


class Answerer:
    """Streams answers from the generation server into Discord and records each one as a Generation."""

    def __init__(self, bot: AnyBot, server: Server, store: Store, settings: Settings) -> None:
        self.bot = bot
        self.server = server
        self.store = store
        self.settings = settings
        self.live: dict[int, ReplyStream] = {}  # discord id of the question -> its stream, to cancel
        self.pace = EditPace(settings.discord.edit_interval_s)  # shared by every answer being written

    async def answer(self, request: Request, question_id: int | None = None) -> Generation | None:
        """Answer `request` in Discord; None when nothing could be answered (busy, failed, abandoned)."""
        try:
            guided = bool(request.passage_ids) and self.settings.ladder.note_guidance != 1.0
            stream = self.server.stream(
                request.chat,
                scope=request.scope,
                temperature=request.temperature,
                guidance=self.settings.ladder.note_guidance if guided else 1.0,
                unguided=without_notes(request.chat) if guided else None,
            )
        except Busy as busy:
            await self._notice(
                request, f"I'm swamped right now; ask again in {seconds_text(busy.retry_after_s)}."
            )
            return None
        writer = ReplyWriter(
            request.channel,
            request.reference,
            pace=self.pace,
            queue_notice_s=self.settings.discord.queue_notice_s,
            footer=request.footer,
        )
        if question_id is not None:
            self.live[question_id] = stream
        try:
            answer = await writer.write(stream)
        except AnswerAbandoned as exc:
            logger.info("answer in channel %s abandoned: %s", request.channel_id, exc)
            return None
        except EngineUnavailable as exc:
            logger.error("the engine did not answer in channel %s: %s", request.channel_id, exc)
            await self._record_failure(request, "".join(writer.streamed), exc)
            await self._notice(
                request, "My model server isn't answering right now. Please ask again in a minute or two."
            )
            return None
        except (EngineError, ValueError) as exc:
            logger.exception("the model failed to answer in channel %s", request.channel_id)
            await self._record_failure(request, "".join(writer.streamed), exc)
            await self._notice(
                request, "Sorry, something went wrong while I was answering. Please try again."
            )
            return None
        finally:
            if question_id is not None:
                self.live.pop(question_id, None)
        generation = await self._record(request, answer.completion)
        assert generation.id is not None
        await self.store(
            crud.attach_discord_messages,
            generation_id=generation.id,
            discord_ids=[m.id for m in answer.messages],
            contents=answer.contents,
            author_id=self.bot.user.id if self.bot.user else None,
            author_name=self.bot.user.display_name if self.bot.user else "",
        )
        await _add_feedback_reactions(answer.messages[-1])
        return generation

    async def _record(self, request: Request, completion: Completion) -> Generation:
        return await self.store(
            crud.record_generation,
            request_message_id=request.request_message_id,
            user_id=request.user_id,
            guild_id=request.guild_id,
            channel_id=request.channel_id,
            regenerates=request.regenerates,
            scope=request.scope,
            instructions_version=request.instructions_version,
            passage_ids=list(request.passage_ids),
            **completion.record_fields(),
        )

    async def _record_failure(self, request: Request, said: str, error: Exception) -> None:
        """The question stays recorded; the reply the model could not finish is kept with its error."""
        try:
            await self.store(
                crud.record_generation,
                request_message_id=request.request_message_id,
                user_id=request.user_id,
                guild_id=request.guild_id,
                channel_id=request.channel_id,
                regenerates=request.regenerates,
                scope=request.scope,
                instructions_version=request.instructions_version,
                passage_ids=list(request.passage_ids),
                prompt=[dict(message) for message in request.chat],
                completion=said,
                error=f"{type(error).__name__}: {error}"[:1000],
            )
        except Exception:  # the notice still goes out; the store logs its own failure
            logger.exception("could not record the failed answer in channel %s", request.channel_id)

    async def _notice(self, request: Request, text: str) -> None:
        await send_notice(request.channel, request.reference, text)


async def send_notice(
    channel: discord.abc.Messageable,
    reference: discord.Message | discord.MessageReference | None,
    text: str,
) -> None:
    """A short message from the bot that is not an answer (so never recorded as one)."""
    try:
        await send_reply(channel, text, reference)
    except (discord.HTTPException, discord.RateLimited) as exc:
        logger.warning("could not send a notice: %s", exc)


async def _add_feedback_reactions(message: discord.Message) -> None:
    permissions = bot_permissions(message.channel)
    if permissions is not None and not (permissions.add_reactions and permissions.read_message_history):
        logger.debug("no Add Reactions or Read Message History in %s: no 👍👎🔁 added", message.channel.id)
        return
    for emoji in FEEDBACK_EMOJIS:
        try:
            await message.add_reaction(emoji)
        except discord.HTTPException as exc:  # no Add Reactions permission, or the message is gone
            logger.warning("could not add %s to message %s: %s", emoji, message.id, exc)
            return


class Chat(commands.Cog):
    """Answers mentions, replies to the bot, its threads and DMs."""

    def __init__(self, bot: AnyBot, deps: CogDependencies) -> None:
        self.bot = bot
        self.answerer = deps.answerer
        self.store = deps.store
        self.settings = deps.settings
        self.rate_limit = deps.rate_limit
        self.listening = deps.listening
        self.embedder = deps.embedder
        self.slots = ChannelSlots(deps.settings.discord.channel_concurrency)
        self.handled: deque[int] = deque(maxlen=1000)  # a replayed MESSAGE_CREATE must not answer twice

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        me = self.bot.user
        if me is None or not await self._is_for_me(message, me):
            return
        if not is_allowed(message, self.settings.discord) or message.id in self.handled:
            return
        self.handled.append(message.id)
        retry_after = self.rate_limit.retry_after(message.author.id)
        if retry_after:
            # decided before anything is awaited: the notice answers the first refused message, not
            # whichever of several concurrent ones finishes recording first
            warn = self.rate_limit.first_refusal(message.author.id)  # say it once, not once per message
            await self._record_unanswered(message)
            if warn:
                text = f"You're asking faster than I can think! Try again in {seconds_text(retry_after)}."
                await send_notice(message.channel, message, text)
            return
        with self.slots.take(message.channel.id) as free:
            if not free:
                await self._record_unanswered(message)
                text = (
                    "I'm already answering as many questions as I can in this channel; ask again in a moment."
                )
                await send_notice(message.channel, message, text)
                return
            try:
                await self.answer(message)
            except discord.HTTPException:  # reading the conversation failed (history, an attachment)
                logger.exception("could not answer message %s", message.id)
                await send_notice(message.channel, message, "Sorry, I couldn't read this conversation.")

    async def _is_for_me(self, message: discord.Message, me: discord.ClientUser) -> bool:
        """Asked (mention, reply, thread, DM), or said by a person in a channel in listen mode."""
        if is_answer_request(message, me):
            return True
        if message.author.bot or message.guild is None or message.type not in ANSWERABLE_TYPES:
            return False
        return await self.listening.is_listening(message.channel)

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        stream = self.answerer.live.get(payload.message_id)
        if stream is not None:
            logger.info("question %s was deleted; cancelling its answer", payload.message_id)
            stream.cancel()

    async def answer(self, message: discord.Message) -> None:
        """Build the conversation around `message`, record its people's messages, and answer it."""
        me = self.bot.user
        assert me is not None
        found = await history(message, self.settings.discord.history_limit)
        turns = await to_turns(found, me, self._answer_text, self.settings.discord.attachment_max_bytes)
        rows = {
            turn.message_id: await self._record_turn(turn, message) for turn in turns if turn.role == "user"
        }
        asking = turns[-1]
        if asking.declined:
            await send_notice(message.channel, message, _declined_note(asking))
        if not asking.text:
            if not asking.declined:
                await send_notice(message.channel, message, "Yes? Ask me something. 🙂")
            return
        guild_id = message.guild.id if message.guild else None
        scope = await self.store(
            scope_for, settings=self.settings.train, guild_id=guild_id, user_id=message.author.id
        )
        grounding = await self.store(
            ground,
            settings=self.settings.ladder,
            system=system_prompt(self.settings.model.system_prompt, message.channel),
            scope=scope,
            channel_ids=channel_chain(message.channel),
            question=asking.text,
            embedder=self.embedder,
        )
        request = Request(
            chat=grounding.apply(to_chat(turns, message.author.id, grounding.system)),
            channel=message.channel,
            reference=message,
            user_id=message.author.id,
            guild_id=guild_id,
            channel_id=message.channel.id,
            request_message_id=rows.get(message.id),
            scope=scope,
            instructions_version=grounding.instructions_version,
            passage_ids=grounding.passage_ids,
            footer=grounding.footer,
        )
        await self.answerer.answer(request, question_id=message.id)

    async def _answer_text(self, discord_id: int) -> str | None:
        generation = await self.store(crud.generation_for_discord_message, discord_id=discord_id)
        return generation.completion if generation is not None else None

    async def _record_unanswered(self, message: discord.Message) -> None:
        """A refused question is recorded all the same (every message that reached the bot is), unanswered."""
        me = self.bot.user
        assert me is not None
        text = clean_text(message_text(message, me.id))
        reply_to = message.reference.message_id if message.reference else None
        author = clean_text(message.author.display_name)
        turn = Turn(message.id, message.author.id, author, "user", text, reply_to)
        await self._record_turn(turn, message)

    async def _record_turn(self, turn: Turn, message: discord.Message) -> int | None:
        row = await self.store(
            crud.record_message,
            role="user",
            content=turn.text,
            discord_id=turn.message_id,
            guild_id=message.guild.id if message.guild else None,
            channel_id=message.channel.id,
            author_id=turn.author_id,
            author_name=turn.author_name,
            reply_to=turn.reply_to,
        )
        return row.id


def _declined_note(turn: Turn) -> str:
    # a few names, each cut short: ten long file names would not fit in one Discord message
    names = [clip(name, 60) for name in turn.declined[:3]]
    more = len(turn.declined) - len(names)
    files = ", ".join(names) + (f" and {more} more" if more else "")
    if turn.text:
        return f"I can't look at {files} (only text files), so I'm answering from your text alone."
    return f"Sorry, I can't look at {files}: I only read text and text files. Could you describe it in words?"
