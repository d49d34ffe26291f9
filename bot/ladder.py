"""The ladder's slash commands: /instructions, /listen, /knowledge and /ladder, for a server's admins."""

from __future__ import annotations

import logging
import math

import discord
from discord import app_commands
from discord.ext import commands

from bot.access import (
    ON_OFF,
    admin_command,
    admin_group,
    admin_only,
    answer_command_error,
    command_scope,
    seconds_text,
    show_admin_commands_to_admins,
)
from bot.conversation import without_surrogates
from bot.dependencies import AnyBot, CogDependencies
from bot.replies import NO_MENTIONS, clip, fit_lines
from bot.review import REVIEW_BATCH, PassageReview
from store import instructions, knowledge
from store.ladder import ladder_advice, rate_line, rung_rates
from store.models import Instructions

logger = logging.getLogger(__name__)

LADDER_ANSWERS = 500  # /ladder judges the rungs on this many of the server's latest answers
PAGE_SIZE = 10  # passages per page of /knowledge list
SHOWN_INSTRUCTIONS = 850  # of each of the two texts /instructions show prints, so both fit one message
TEXT_FILES = (".txt", ".md")
TITLE_MAX = 100
IDS_SHOWN = 10  # passage ids a reply lists before it says "…"


class ServerOnly(app_commands.CheckFailure):
    """A server's command was used in a DM; the message is what the person is told."""

    def __init__(self, command: str) -> None:
        super().__init__(f"/{command} works in a server: use it in one of the server's channels.")


class Ladder(commands.Cog):
    """/instructions set|show|clear, /listen, /knowledge add|pins|list|remove|review and /ladder; each acts on
    the server it is used in (its scope)."""

    instructions_group = admin_group(
        "instructions", "What I'm told in this server and its channels (admins)."
    )
    knowledge_group = admin_group("knowledge", "The open book I look things up in before answering (admins).")

    def __init__(self, bot: AnyBot, deps: CogDependencies) -> None:
        self.bot = bot
        self.store = deps.store
        self.settings = deps.settings
        self.listening = deps.listening
        show_admin_commands_to_admins(self, self.settings.discord)

    async def scope_of(self, interaction: discord.Interaction) -> str:
        """The scope a command acts on: the server it is used in (TRAIN_SCOPE=guild), else the global one."""
        return await command_scope(self.store, self.settings.train, interaction)

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        # Before the admin check. Discord offers these commands in servers only; were one used in a DM anyway,
        # the person's scope could be the server they last talked in (TRAIN_DM_SCOPE=recent_guild).
        if interaction.guild_id is None:
            raise ServerOnly(interaction.command.qualified_name if interaction.command else "this")
        return True

    async def cog_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        if isinstance(error, ServerOnly):
            await interaction.response.send_message(str(error), ephemeral=True)
            return
        await answer_command_error(interaction, error)

    # -- /instructions --------------------------------------------------------------------------------

    @instructions_group.command(name="set", description="Set the server's instructions, or one channel's.")
    @app_commands.describe(
        text="What I should know or do here; replaces the current instructions",
        channel="Only for this channel (default: the whole server)",
    )
    @admin_only()
    async def set_instructions(
        self, interaction: discord.Interaction, text: str, channel: discord.TextChannel | None = None
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        cap = self.settings.ladder.instructions_max_chars
        try:
            row = await self.store(
                instructions.set_instructions,
                scope=await self.scope_of(interaction),
                channel_id=channel.id if channel else instructions.SERVER,
                text=without_surrogates(text),
                by=interaction.user.id,
                max_chars=cap,
            )
        except ValueError as exc:  # over the cap: the store's words name it and the length
            await interaction.followup.send(
                f"Not saved: {exc} (LADDER_INSTRUCTIONS_MAX_CHARS is {cap}).", ephemeral=True
            )
            return
        done = "Saved" if row.text else "Cleared"
        await interaction.followup.send(
            f"{done} the instructions for {where(channel)}: version {row.version}, in play from the next "
            "answer.",
            ephemeral=True,
        )

    @instructions_group.command(name="show", description="The server's instructions and a channel's.")
    @app_commands.describe(channel="The channel whose own instructions to show (default: this one)")
    @admin_only()
    async def show_instructions(
        self, interaction: discord.Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        scope = await self.scope_of(interaction)
        if channel is None and isinstance(interaction.channel, discord.TextChannel):
            channel = interaction.channel
        server = await self.store(instructions.latest_instructions, scope=scope)
        lines = [shown("Server-wide", server)]
        if channel is not None:
            own = await self.store(instructions.latest_instructions, scope=scope, channel_id=channel.id)
            lines.append(shown(f"In {channel.mention}", own))
        await interaction.followup.send(fit_lines(lines), ephemeral=True, allowed_mentions=NO_MENTIONS)

    @instructions_group.command(
        name="clear", description="Clear the server's instructions, or one channel's."
    )
    @app_commands.describe(channel="Only this channel's (default: the server-wide ones)")
    @admin_only()
    async def clear_instructions(
        self, interaction: discord.Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        scope = await self.scope_of(interaction)
        channel_id = channel.id if channel else instructions.SERVER
        latest = await self.store(instructions.latest_instructions, scope=scope, channel_id=channel_id)
        if latest is None or not latest.text:
            await interaction.followup.send(
                f"There are no instructions for {where(channel)} to clear.", ephemeral=True
            )
            return
        row = await self.store(
            instructions.set_instructions,
            scope=scope,
            channel_id=channel_id,
            text="",
            by=interaction.user.id,
            max_chars=self.settings.ladder.instructions_max_chars,
        )
        await interaction.followup.send(
            f"Cleared the instructions for {where(channel)} (version {row.version}).", ephemeral=True
        )

    # -- /listen --------------------------------------------------------------------------------------

    @app_commands.command(
        name="listen", description="Answer every message in this channel, or only mentions (admins)."
    )
    @app_commands.describe(
        mode="on: I answer every message here; off (the default): only mentions and replies"
    )
    @app_commands.choices(mode=ON_OFF)
    @admin_command
    async def listen(self, interaction: discord.Interaction, mode: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.channel_id is not None  # a command used in a server always has its channel
        channel_id, on = interaction.channel_id, mode == "on"
        was_on = channel_id in await self.store(instructions.listening_channels)
        await self.listening.set(
            scope=await self.scope_of(interaction), channel_id=channel_id, listen=on, by=interaction.user.id
        )
        logger.info("channel %s: listen mode %s by %s", channel_id, mode, interaction.user.id)
        change = ("was already" if was_on == on else "is now") + f" {mode} in <#{channel_id}>"
        limits = self.settings.discord
        rate = f"{limits.user_rate_limit} answers per person every {seconds_text(limits.user_rate_window_s)}"
        if on:
            text = (
                f"Listen mode {change}: I answer every message here, not only mentions. The rate limit "
                f"still applies ({rate})."
            )
        else:
            text = f"Listen mode {change}: I answer only when mentioned, replied to, or in my threads."
        await interaction.followup.send(text, ephemeral=True)

    # -- /knowledge -----------------------------------------------------------------------------------

    @knowledge_group.command(name="add", description="Add text, or a .txt or .md file, to the open book.")
    @app_commands.describe(
        text="The text to add",
        file="A .txt or .md file to add",
        title="The name answers cite it by (default: the file's name)",
    )
    @admin_only()
    async def add(
        self,
        interaction: discord.Interaction,
        text: str | None = None,
        file: discord.Attachment | None = None,
        title: str | None = None,
    ) -> None:
        refusal = self.file_refusal(file) if file is not None else None
        if text is None and file is None:
            refusal = "Give me the text to add, or a .txt or .md file."
        if refusal is not None:
            await interaction.response.send_message(refusal, ephemeral=True, allowed_mentions=NO_MENTIONS)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        parts = [without_surrogates(text)] if text else []
        if file is not None:
            try:
                parts.append((await file.read()).decode("utf-8", errors="replace"))
            except discord.HTTPException as exc:
                logger.warning("could not download %s: %s", file.url, exc)
                await interaction.followup.send(
                    f"I couldn't download {clip(file.filename, TITLE_MAX)}; try again.", ephemeral=True
                )
                return
        name = title or (file.filename if file else f"added by {interaction.user.display_name}")
        try:
            added = await self.store(
                knowledge.add_passages,
                scope=await self.scope_of(interaction),
                source="admin",
                title=clip(without_surrogates(name), TITLE_MAX),
                text="\n\n".join(parts),
                max_chars=self.settings.ladder.passage_max_chars,
                added_by=interaction.user.id,
            )
        except ValueError as exc:  # nothing but blanks
            await interaction.followup.send(f"Nothing added: {exc}.", ephemeral=True)
            return
        count = f"{len(added)} passage" + ("" if len(added) == 1 else "s")
        await interaction.followup.send(
            f"Added {count} to the open book: {ids_text([p.id for p in added if p.id is not None])}.",
            ephemeral=True,
        )

    def file_refusal(self, file: discord.Attachment) -> str | None:
        """Why a file cannot go into the book (not text, or too big); None when it can."""
        name = clip(file.filename, TITLE_MAX)
        is_text = file.filename.lower().endswith(TEXT_FILES) or (file.content_type or "").startswith("text/")
        if not is_text:
            return f"I can only add text files (.txt or .md), not {name}."
        limit = self.settings.discord.attachment_max_bytes
        if file.size > limit:
            return (
                f"{name} is {file.size:,} bytes; the open book takes files of up to {limit:,} bytes "
                "(DISCORD_ATTACHMENT_MAX_BYTES)."
            )
        return None

    @knowledge_group.command(name="pins", description="Add this channel's pinned messages to the open book.")
    @admin_only()
    async def pins(self, interaction: discord.Interaction) -> None:
        channel = interaction.channel
        if not isinstance(channel, discord.TextChannel | discord.Thread):
            await interaction.response.send_message(
                "Use /knowledge pins in a text channel or thread.", ephemeral=True
            )
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            pinned = [message async for message in channel.pins(limit=None)]
        except discord.Forbidden:
            await interaction.followup.send(
                "I may not read this channel's pins (I need View Channel).", ephemeral=True
            )
            return
        added = await self.store(
            knowledge.add_pinned,
            scope=await self.scope_of(interaction),
            pins=[(m.id, m.author.id, m.clean_content) for m in pinned],
            channel_name=channel.name,
            max_chars=self.settings.ladder.passage_max_chars,
            added_by=interaction.user.id,
        )
        if not pinned:
            text = "I see no pinned messages here (to read them I need Read Message History)."
        else:
            skipped = len(pinned) - added
            text = f"Added {added} new pinned message{'' if added == 1 else 's'} to the open book"
            text += f"; {skipped} were there already or had no text." if skipped else "."
        await interaction.followup.send(text, ephemeral=True)

    @knowledge_group.command(name="list", description="The open book's passages, newest first.")
    @app_commands.describe(page=f"Which page of {PAGE_SIZE} (default: the first)")
    @admin_only()
    async def list_passages(
        self, interaction: discord.Interaction, page: app_commands.Range[int, 1] = 1
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        scope = await self.scope_of(interaction)
        counts = await self.store(knowledge.count_passages, scope=scope)
        rows = await self.store(
            knowledge.list_passages, scope=scope, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
        )
        accepted, pending = counts.get("accepted", 0), counts.get("pending", 0)
        waiting = f"; {pending} wait for /knowledge review" if pending else ""
        pages = max(1, math.ceil(accepted / PAGE_SIZE))
        lines = [f"**The open book:** {accepted} passages{waiting}. Page {page} of {pages}, newest first:"]
        for passage in rows:
            title = discord.utils.escape_markdown(clip(passage.title, 60))
            preview = discord.utils.escape_markdown(clip(" ".join(passage.text.split()), 80))
            lines.append(f"`#{passage.id}` **{title}** ({passage.source}): {preview}")
        if not rows:
            lines.append(
                "Nothing on this page."
                if accepted
                else "Add text with /knowledge add or pins with /knowledge pins."
            )
        await interaction.followup.send(
            fit_lines(lines, more="…and {count} more."), ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    @knowledge_group.command(name="remove", description="Take a passage out of the open book.")
    @app_commands.rename(passage_id="id")
    @app_commands.describe(passage_id="The passage's number, e.g. 12 (see /knowledge list)")
    @admin_only()
    async def remove(self, interaction: discord.Interaction, passage_id: int) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            removed = await self.store(
                knowledge.remove_passage, scope=await self.scope_of(interaction), passage_id=passage_id
            )
        except LookupError:
            await interaction.followup.send(
                f"This server's book has no passage #{passage_id}; see /knowledge list.", ephemeral=True
            )
            return
        title = discord.utils.escape_markdown(clip(removed.title, TITLE_MAX))
        await interaction.followup.send(
            f"Removed #{passage_id} ({title}) from the open book.",
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @knowledge_group.command(
        name="review", description="Accept or drop members' corrections waiting for review."
    )
    @admin_only()
    async def review(self, interaction: discord.Interaction) -> None:
        # only the admin who asked sees the list: members' unreviewed words are not for the whole channel
        await interaction.response.defer(ephemeral=True, thinking=True)
        scope = await self.scope_of(interaction)
        pending = await self.store(knowledge.list_passages, scope=scope, status="pending", limit=REVIEW_BATCH)
        if not pending:
            await interaction.followup.send(
                "Nothing waits for review: the open book is up to date.", ephemeral=True
            )
            return
        total = (await self.store(knowledge.count_passages, scope=scope)).get("pending", 0)
        view = PassageReview(self.store, self.settings.discord, scope, pending, waiting=total - len(pending))
        view.message = await interaction.followup.send(
            view.content(), view=view, allowed_mentions=NO_MENTIONS, ephemeral=True, wait=True
        )

    # -- /ladder --------------------------------------------------------------------------------------

    @app_commands.command(
        name="ladder",
        description="Which rung (instructions, open book, fine-tuning) moved the 👍-rate (admins).",
    )
    @admin_command
    async def ladder(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        rates = await self.store(rung_rates, scope=await self.scope_of(interaction), limit=LADDER_ANSWERS)
        lines = [ladder_advice(rates)]
        if rates:
            lines.append(f"**Per version**, over the last {LADDER_ANSWERS} answers at most:")
            lines += [f"• {rate_line(rate)}" for rate in rates]
        await interaction.followup.send(
            fit_lines(lines, more="…and {count} older versions."),
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )


def where(channel: discord.TextChannel | None) -> str:
    return channel.mention if channel is not None else "the whole server"


def shown(label: str, row: Instructions | None) -> str:
    """One text of /instructions show, with its version and age; "none" when never set or cleared."""
    if row is None:
        return f"**{label}:** none."
    if not row.text:
        return f"**{label}:** none (cleared in version {row.version})."
    age = discord.utils.format_dt(row.created_at, "R")
    return f"**{label}** (version {row.version}, set {age}):\n{clip(row.text, SHOWN_INSTRUCTIONS)}"


def ids_text(ids: list[int]) -> str:
    """ "#4, #5, #6", or "#4, #5, … #90 (87 in all)" for many."""
    if len(ids) <= IDS_SHOWN:
        return ", ".join(f"#{i}" for i in ids)
    return ", ".join(f"#{i}" for i in ids[: IDS_SHOWN - 1]) + f", … #{ids[-1]} ({len(ids)} in all)"
