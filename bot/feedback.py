"""Votes from reactions, alternative answers from 🔁, corrections from "Suggest a better answer"."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections import OrderedDict

import discord
from discord import app_commands
from discord.ext import commands

from bot.access import is_admin, public_command, seconds_text
from bot.answering import Request, send_notice
from bot.conversation import clean_text
from bot.dependencies import AnyBot, CogDependencies
from bot.grounding import passage_titles, sources_footer
from bot.reasons import ReasonOffers
from bot.storage import Store
from store import crud, knowledge
from store.models import Correction, Generation, Passage
from store.settings import Settings

logger = logging.getLogger(__name__)

VOTES = {"👍": 1, "👎": -1}
VARIANTS = re.compile("[\U0001f3fb-\U0001f3ff\ufe0f]")  # skin tones and the emoji variation selector
REGENERATE = "🔁"
MAX_MODAL_TEXT = 4000  # Discord's limit for a text input
MAX_HELD_REGENERATIONS = 10_000  # remembered 🔁s; the oldest are forgotten first
MODAL_LOOKUP_S = 1.5  # the longest the correction form waits for the store (Discord allows 3 s in all)


class Feedback(commands.Cog):
    """Turns reactions on the bot's answers into votes and alternative answers."""

    def __init__(self, bot: AnyBot, deps: CogDependencies) -> None:
        self.bot = bot
        self.answerer = deps.answerer
        self.store = deps.store
        self.settings = deps.settings
        self.rate_limit = deps.rate_limit
        # discord.py runs each event in its own task; votes must still apply in the order they were cast
        self._in_order = asyncio.Lock()
        # (message, user) of each 🔁 held: Discord may deliver an event twice, and only a new 🔁 asks again
        self._regenerations: OrderedDict[tuple[int, int], None] = OrderedDict()
        self.menu = public_command(
            app_commands.ContextMenu(name="Suggest a better answer", callback=self.suggest)
        )
        self.reasons = ReasonOffers(self.store, self.settings.discord.downvote_reason_s)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)  # discord.py keeps context menus out of cogs, so add it by hand

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        emoji = _meaning(payload.emoji)
        if emoji not in VOTES and emoji != REGENERATE:
            return
        me = self.bot.user
        if me is None or payload.message_author_id not in (None, me.id):  # not on one of the bot's answers
            return
        async with self._in_order:  # taken before any wait, so events keep the order they came in
            if await self._by_a_bot(payload):
                return
            generation = await self.store(crud.generation_for_discord_message, discord_id=payload.message_id)
            if generation is None or generation.id is None:
                return
            if emoji == REGENERATE and not self._first_regenerate(payload):
                logger.info("ignoring a repeated 🔁 by %s on message %s", payload.user_id, payload.message_id)
                return
            if emoji in VOTES:
                vote = await self.store(
                    crud.record_feedback,
                    generation_id=generation.id,
                    rater_id=payload.user_id,
                    value=VOTES[emoji],
                )
                logger.info("vote %s by %s on generation %s", emoji, payload.user_id, generation.id)
        if emoji == REGENERATE:
            await self.regenerate(generation, payload)
        elif vote.value < 0 and vote.reason is None:
            await self.reasons.offer(self._channel(payload), _answer(payload), payload.user_id, generation.id)
        else:
            await self.reasons.withdraw(payload.message_id, payload.user_id)  # switched to 👍

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        emoji = _meaning(payload.emoji)
        me = self.bot.user
        # A bot's reaction never counted, so taking one back changes nothing: only the bot's own are skipped
        if (emoji not in VOTES and emoji != REGENERATE) or me is None or payload.user_id == me.id:
            return
        async with self._in_order:
            if emoji == REGENERATE:  # under the lock, so it cannot overtake the 🔁 it takes back
                self._regenerations.pop((payload.message_id, payload.user_id), None)
                return
            generation = await self.store(crud.generation_for_discord_message, discord_id=payload.message_id)
            if generation is None or generation.id is None:
                return
            # only a vote of this value: removing 👍 after switching to 👎 keeps the 👎
            retracted = await self.store(
                crud.retract_feedback,
                generation_id=generation.id,
                rater_id=payload.user_id,
                value=VOTES[emoji],
            )
        if retracted is not None and retracted.value < 0:
            await self.reasons.withdraw(payload.message_id, payload.user_id)

    @commands.Cog.listener()
    async def on_raw_reaction_clear(self, payload: discord.RawReactionClearEvent) -> None:
        """A moderator removed every reaction from a message: its votes and 🔁s go with them."""
        await self._cleared(payload.message_id, emoji=None)

    @commands.Cog.listener()
    async def on_raw_reaction_clear_emoji(self, payload: discord.RawReactionClearEmojiEvent) -> None:
        """A moderator removed one emoji's reactions from a message: a 👍 or 👎 takes its votes."""
        await self._cleared(payload.message_id, emoji=_meaning(payload.emoji))

    async def _cleared(self, message_id: int, *, emoji: str | None) -> None:
        """Reactions `emoji` (None: all) were cleared from a message: retract the votes they were on the
        answer it is part of, and forget its 🔁s (so a new 🔁 asks again)."""
        if emoji is not None and emoji not in VOTES and emoji != REGENERATE:
            return
        async with self._in_order:
            if emoji in (None, REGENERATE):
                for held in [key for key in self._regenerations if key[0] == message_id]:
                    del self._regenerations[held]
            if emoji == REGENERATE:
                return
            generation = await self.store(crud.generation_for_discord_message, discord_id=message_id)
            if generation is None or generation.id is None:
                return
            value = VOTES[emoji] if emoji is not None else None
            retracted = await self.store(crud.retract_all_feedback, generation_id=generation.id, value=value)
            logger.info("reactions cleared on message %s: %d votes retracted", message_id, retracted)

    def _first_regenerate(self, payload: discord.RawReactionActionEvent) -> bool:
        """True for a new 🔁; False for one already held (the same event delivered again)."""
        key = (payload.message_id, payload.user_id)
        if key in self._regenerations:
            return False
        self._regenerations[key] = None
        if len(self._regenerations) > MAX_HELD_REGENERATIONS:
            self._regenerations.popitem(last=False)
        return True

    async def _by_a_bot(self, payload: discord.RawReactionActionEvent) -> bool:
        """The bot's own reactions, and other bots', never count (in DMs too, where no member comes along)."""
        if self.bot.user is None or payload.user_id == self.bot.user.id:
            return True
        if payload.member is not None:
            return payload.member.bot
        user = self.bot.get_user(payload.user_id)
        if user is None:
            try:
                user = await self.bot.fetch_user(payload.user_id)
            except discord.HTTPException as exc:
                logger.warning("could not look up reacting user %s: %s", payload.user_id, exc)
                return False
        return user.bot

    def _channel(self, payload: discord.RawReactionActionEvent) -> discord.abc.Messageable:
        """Where a reaction happened, cached or not."""
        channel = self.bot.get_channel(payload.channel_id) or self.bot.get_partial_messageable(
            payload.channel_id
        )
        assert isinstance(channel, discord.abc.Messageable)
        return channel

    async def regenerate(self, generation: Generation, payload: discord.RawReactionActionEvent) -> None:
        """Answer the same prompt again, linked to the original: the pair is what DPO learns from."""
        channel, reference = self._channel(payload), _answer(payload)
        retry_after = self.rate_limit.retry_after(payload.user_id)
        if retry_after:
            if self.rate_limit.first_refusal(payload.user_id):  # say it once, not once per 🔁 in a flood
                await send_notice(
                    channel, reference, f"Another answer in {seconds_text(retry_after)}, please."
                )
            return
        temperature = max(self.settings.model.temperature, self.settings.discord.regenerate_temperature)
        request = Request(
            chat=list(generation.prompt),  # type: ignore[arg-type]  # stored exactly as the model got it
            channel=channel,
            reference=reference,
            user_id=generation.user_id or payload.user_id,
            guild_id=generation.guild_id,
            channel_id=payload.channel_id,
            request_message_id=generation.request_message_id,
            regenerates=generation.id,
            temperature=temperature,
            scope=generation.scope,  # the alternative is answered and learned where the first one was
            instructions_version=generation.instructions_version,  # and given what the first one was
            passage_ids=tuple(generation.passage_ids),
            footer=sources_footer(await self.store(passage_titles, passage_ids=generation.passage_ids)),
        )
        await self.answerer.answer(request)

    async def suggest(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Open the correction form for one of the bot's answers.

        A modal must be the interaction's first response, within Discord's 3 s: the answer's full text is
        looked up for a moment only; past it, the form starts from the message as shown.
        """
        not_mine = "That isn't one of my answers, so there is nothing to correct."
        if self.bot.user is None or message.author.id != self.bot.user.id:
            await interaction.response.send_message(not_mine, ephemeral=True)
            return
        lookup = self.store(crud.generation_for_discord_message, discord_id=message.id)
        try:
            generation = await asyncio.wait_for(lookup, timeout=MODAL_LOOKUP_S)
        except TimeoutError:
            logger.warning("the store was slow; the correction form starts from message %s", message.id)
            await interaction.response.send_modal(
                CorrectionForm(self.store, self.settings, message.id, message.content)
            )
            return
        if generation is None or generation.id is None:
            await interaction.response.send_message(not_mine, ephemeral=True)
            return
        await interaction.response.send_modal(
            CorrectionForm(self.store, self.settings, message.id, generation.completion)
        )


def _answer(payload: discord.RawReactionActionEvent) -> discord.MessageReference:
    """A reference to the answer a reaction is on, to reply to it (even once it is gone)."""
    return discord.MessageReference(
        message_id=payload.message_id,
        channel_id=payload.channel_id,
        guild_id=payload.guild_id,
        fail_if_not_exists=False,
    )


def _meaning(emoji: discord.PartialEmoji) -> str:
    """The reaction as the bot reads it: 👍🏽 and 👍️ are 👍; a custom emoji never is, whatever its name."""
    if emoji.is_custom_emoji():
        return str(emoji)
    return VARIANTS.sub("", emoji.name)


class CorrectionForm(discord.ui.Modal, title="Suggest a better answer"):
    """A text box, prefilled with the answer; what is submitted becomes a Correction."""

    better: discord.ui.TextInput[CorrectionForm] = discord.ui.TextInput(
        label="A better answer",
        custom_id="better",
        style=discord.TextStyle.long,
        max_length=MAX_MODAL_TEXT,
    )

    def __init__(self, store: Store, settings: Settings, message_id: int, answer: str) -> None:
        # discord.py routes a submission to the open modal with its custom_id, whoever opened it: two people
        # correcting one answer at once would otherwise get each other's form and one text would be lost.
        super().__init__(custom_id=f"correction:{message_id}:{secrets.token_hex(8)}")
        self.store = store
        self.settings = settings
        self.message_id = message_id  # one of the answer's messages; the answer is found from it on submit
        self.better.default = answer[:MAX_MODAL_TEXT]

    async def on_submit(self, interaction: discord.Interaction) -> None:
        text = clean_text(self.better.value).strip()
        if not text:
            await interaction.response.send_message("An empty answer can't be better. 🙂", ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)  # the store may wait on a writer
        generation = await self.store(crud.generation_for_discord_message, discord_id=self.message_id)
        if generation is None or generation.id is None:  # the answer was forgotten meanwhile (/forget-me)
            await interaction.followup.send("That answer is gone now, so there is nothing to correct.")
            return
        correction = await self.store(
            crud.record_correction,
            generation_id=generation.id,
            author_id=interaction.user.id,
            content=text,
            discord_interaction_id=interaction.id,
        )
        logger.info("correction by %s for generation %s", interaction.user.id, generation.id)
        passage = await self._to_knowledge(interaction, generation, correction)
        if passage is None:
            thanks = "Thanks! I'll learn from your answer."
        elif passage.status == "accepted":
            thanks = "Thanks! It's in this server's knowledge now, and I'll learn from it."
        else:
            thanks = "Thanks! I'll learn from it, and an admin will review it for this server's knowledge."
        await interaction.followup.send(thanks, ephemeral=True)

    async def _to_knowledge(
        self, interaction: discord.Interaction, generation: Generation, correction: Correction
    ) -> Passage | None:
        """A correction in a server becomes a passage of its book: at once from an admin or a trusted member,
        else pending an admin's review (None: in a DM, the book closed, or its author opted out)."""
        user = interaction.user
        if generation.guild_id is None or self.settings.ladder.passages == 0:
            return None
        roles = {role.id for role in getattr(user, "roles", [])}
        trusted = is_admin(user, self.settings.discord) or bool(
            roles & set(self.settings.ladder.trusted_role_ids)
        )
        return await self.store(
            knowledge.add_correction,
            scope=generation.scope,
            correction=correction,
            question=question_of(generation),
            author_name=clean_text(user.display_name) or str(user.id),
            trusted=trusted,
            max_chars=self.settings.ladder.passage_max_chars,
        )


def question_of(generation: Generation) -> str | None:
    """The question a generation answered: the last user message of its prompt, without a speaker's name."""
    asked = [message["content"] for message in generation.prompt if message.get("role") == "user"]
    return knowledge.without_reference(asked[-1]) if asked else None
