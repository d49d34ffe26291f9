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

from bot.access import seconds_text
from bot.answering import Request, send_notice
from bot.conversation import clean_text
from bot.dependencies import CogDependencies
from bot.storage import Store
from store import crud
from store.models import Generation

logger = logging.getLogger(__name__)

VOTES = {"👍": 1, "👎": -1}
VARIANTS = re.compile("[\U0001f3fb-\U0001f3ff\ufe0f]")  # skin tones and the emoji variation selector
REGENERATE = "🔁"
MAX_MODAL_TEXT = 4000  # Discord's limit for a text input
MAX_HELD_REGENERATIONS = 10_000  # remembered 🔁s; the oldest are forgotten first


class Feedback(commands.Cog):
    """Turns reactions on the bot's answers into votes and alternative answers."""

    def __init__(self, bot: commands.Bot, deps: CogDependencies) -> None:
        self.bot = bot
        self.answerer = deps.answerer
        self.store = deps.store
        self.settings = deps.settings
        self.rate_limit = deps.rate_limit
        # discord.py runs each event in its own task; votes must still apply in the order they were cast
        self._in_order = asyncio.Lock()
        # (message, user) of each 🔁 held: Discord may deliver an event twice, and only a new 🔁 asks again
        self._regenerations: OrderedDict[tuple[int, int], None] = OrderedDict()
        self.menu = app_commands.ContextMenu(name="Suggest a better answer", callback=self.suggest)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)  # discord.py keeps context menus out of cogs, so add it by hand

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        emoji = _meaning(payload.emoji)
        if self._ignored(payload) or (emoji not in VOTES and emoji != REGENERATE):
            return
        async with self._in_order:
            generation = await self.store(crud.generation_for_discord_message, discord_id=payload.message_id)
            if generation is None or generation.id is None:
                return
            if emoji == REGENERATE and not self._first_regenerate(payload):
                logger.info("ignoring a repeated 🔁 by %s on message %s", payload.user_id, payload.message_id)
                return
            if emoji in VOTES:
                await self.store(
                    crud.record_feedback,
                    generation_id=generation.id,
                    rater_id=payload.user_id,
                    value=VOTES[emoji],
                )
                logger.info("vote %s by %s on generation %s", emoji, payload.user_id, generation.id)
                return
        await self.regenerate(generation, payload)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        emoji = _meaning(payload.emoji)
        if self._ignored(payload) or (emoji not in VOTES and emoji != REGENERATE):
            return
        async with self._in_order:
            if emoji == REGENERATE:  # under the lock, so it cannot overtake the 🔁 it takes back
                self._regenerations.pop((payload.message_id, payload.user_id), None)
                return
            generation = await self.store(crud.generation_for_discord_message, discord_id=payload.message_id)
            if generation is None or generation.id is None:
                return
            # only a vote of this value: removing 👍 after switching to 👎 keeps the 👎
            await self.store(
                crud.retract_feedback,
                generation_id=generation.id,
                rater_id=payload.user_id,
                value=VOTES[emoji],
            )

    def _first_regenerate(self, payload: discord.RawReactionActionEvent) -> bool:
        """True for a new 🔁; False for one already held (the same event delivered again)."""
        key = (payload.message_id, payload.user_id)
        if key in self._regenerations:
            return False
        self._regenerations[key] = None
        if len(self._regenerations) > MAX_HELD_REGENERATIONS:
            self._regenerations.popitem(last=False)
        return True

    def _ignored(self, payload: discord.RawReactionActionEvent) -> bool:
        """The bot's own reactions, and other bots', never count."""
        if self.bot.user is None or payload.user_id == self.bot.user.id:
            return True
        return payload.member is not None and payload.member.bot

    async def regenerate(self, generation: Generation, payload: discord.RawReactionActionEvent) -> None:
        """Answer the same prompt again, linked to the original: the pair is what DPO learns from."""
        channel = self.bot.get_channel(payload.channel_id) or self.bot.get_partial_messageable(
            payload.channel_id
        )
        assert isinstance(channel, discord.abc.Messageable)
        reference = discord.MessageReference(
            message_id=payload.message_id,
            channel_id=payload.channel_id,
            guild_id=payload.guild_id,
            fail_if_not_exists=False,
        )
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
        )
        await self.answerer.answer(request)

    async def suggest(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Open the correction form for one of the bot's answers."""
        generation = await self.store(crud.generation_for_discord_message, discord_id=message.id)
        if generation is None or generation.id is None:
            await interaction.response.send_message(
                "That isn't one of my answers, so there is nothing to correct.", ephemeral=True
            )
            return
        await interaction.response.send_modal(CorrectionForm(self.store, generation))


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

    def __init__(self, store: Store, generation: Generation) -> None:
        # discord.py routes a submission to the open modal with its custom_id, whoever opened it: two people
        # correcting one answer at once would otherwise get each other's form and one text would be lost.
        super().__init__(custom_id=f"correction:{generation.id}:{secrets.token_hex(8)}")
        self.store = store
        self.generation_id = generation.id
        self.better.default = generation.completion[:MAX_MODAL_TEXT]

    async def on_submit(self, interaction: discord.Interaction) -> None:
        text = clean_text(self.better.value).strip()
        if not text:
            await interaction.response.send_message("An empty answer can't be better. 🙂", ephemeral=True)
            return
        await self.store(
            crud.record_correction,
            generation_id=self.generation_id,
            author_id=interaction.user.id,
            content=text,
            discord_interaction_id=interaction.id,
        )
        logger.info("correction by %s for generation %s", interaction.user.id, self.generation_id)
        await interaction.response.send_message("Thanks! I'll learn from your answer.", ephemeral=True)
