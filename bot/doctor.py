"""/doctor: what the bot needs in a channel and its server, checked, with what to fix in plain words."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import discord
from discord import app_commands
from discord.ext import commands

from bot.access import admin_command, answer_command_error, show_admin_commands_to_admins
from bot.dependencies import AnyBot, CogDependencies
from bot.replies import bot_permissions, fit_lines
from engine.embedding import INSTALL_HINT
from engine.loading import base_model_id
from store import registry, runs
from store.models import utcnow

logger = logging.getLogger(__name__)

# (permission, as Discord's settings name it, what goes wrong without it)
CHANNEL_NEEDS = (
    ("view_channel", "View Channel", "I can't see this channel or anything said in it"),
    ("send_messages", "Send Messages", "I can't answer here"),
    ("send_messages_in_threads", "Send Messages in Threads", "I can't answer in this channel's threads"),
    (
        "read_message_history",
        "Read Message History",
        "I can't read the conversation before a question, and my answers can't be replies",
    ),
    ("add_reactions", "Add Reactions", "I can't put 👍 👎 🔁 under my answers for people to click"),
)
# What an invite grants: the above, and Attach Files (the /stats chart). 274878008384, as in the README.
INVITE_PERMISSIONS = discord.Permissions(**{name: True for name, _, _ in CHANNEL_NEEDS}, attach_files=True)
TRAINER_LATE_CHECKS = 3  # the trainer is missing after this many check intervals without a sign of life


@dataclass(frozen=True)
class Finding:
    """One check: fine (✅), something to fix (❌), or worth knowing (⚠️)."""

    mark: str
    text: str


def ok(text: str) -> Finding:
    return Finding("✅", text)


def problem(text: str) -> Finding:
    return Finding("❌", text)


def note(text: str) -> Finding:
    return Finding("⚠️", text)


def invite_url(application_id: int) -> str:
    """The URL that adds the bot to a server with the scopes and permissions it needs."""
    return discord.utils.oauth_url(
        application_id, permissions=INVITE_PERMISSIONS, scopes=("bot", "applications.commands")
    )


def channel_findings(channel: object) -> list[Finding]:
    """The bot's permissions in a channel (or thread), each with what it breaks when missing."""
    permissions = bot_permissions(channel)
    if permissions is None:
        return [ok("This is a DM: I may do everything I need here.")]
    in_thread = isinstance(channel, discord.Thread)
    found = []
    for name, label, without in CHANNEL_NEEDS:
        if name == ("send_messages" if in_thread else "send_messages_in_threads"):
            continue  # a thread needs the thread permission, a channel the plain one
        if getattr(permissions, name):
            found.append(ok(label))
        else:
            found.append(problem(f"{label} is missing: {without}. Allow it for my role in this channel."))
    return found


def intent_findings(bot: AnyBot) -> list[Finding]:
    """The gateway intents the bot asked for (Discord refused to connect at all if one was not granted)."""
    if bot.intents.message_content:
        return [ok("Message Content intent")]
    return [
        note(
            "Message Content intent is off: I only see messages that mention me, replies to me and DMs. "
            "Turn it on in the Developer Portal (Bot > Privileged Gateway Intents) and in the bot's intents."
        )
    ]


async def command_findings(
    bot: AnyBot, guild: discord.Guild | None, synced_guilds: list[int]
) -> list[Finding]:
    """Whether the commands Discord has for this server are the ones this bot defines."""
    target = discord.Object(guild.id) if guild is not None and guild.id in synced_guilds else None
    if guild is not None and synced_guilds and target is None:
        return [
            problem(
                "My commands are synced to other servers only (DISCORD_GUILD_IDS): add this server's id "
                "there, or leave it empty to publish them everywhere."
            )
        ]
    try:
        published = await bot.tree.fetch_commands(guild=target)
    except discord.HTTPException as exc:
        return [problem(f"Could not read my commands from Discord ({exc}).")]
    local = bot.tree.get_commands(guild=target) or bot.tree.get_commands()
    missing = sorted({c.name for c in local} - {c.name for c in published})
    if missing:
        return [problem(f"Commands not synced here yet: {', '.join(missing)}. Restart me to sync them.")]
    return [ok(f"{len(published)} commands synced")]


async def service_findings(deps: CogDependencies) -> list[Finding]:
    """The model being served, the store (written to, so a read-only or locked store shows), the trainer."""
    settings, server = deps.settings, deps.server
    active = await deps.store(registry.active_version)
    served = server.active_adapter
    found = [ok(f"Model {base_model_id(settings)}, serving {served or 'the base model'}")]
    registered = active.name if active else None
    if registered != served:
        found.append(note(f"The registry's active adapter is {registered or 'none'}; loading it."))
    try:
        await deps.store(runs.beat_service, name="bot", detail={"pid": os.getpid()})
        found.append(ok("Store writable"))
    except Exception as exc:  # any database error is the finding
        logger.warning("/doctor: the store refused a write: %s", exc)
        found.append(problem(f"The store refused a write ({type(exc).__name__}): see my log."))
    found.append(await _trainer_finding(deps))
    found.append(book_finding(deps))
    return found


def book_finding(deps: CogDependencies) -> Finding:
    """How the open book is searched (LADDER_RETRIEVAL), and why only by words when hybrid was asked for."""
    ladder = deps.settings.ladder
    if ladder.passages == 0:
        return ok("The open book is closed (LADDER_PASSAGES=0)")
    if deps.embedder is not None:
        return ok(f"The open book is searched by meaning and words ({deps.embedder.name})")
    if ladder.retrieval == "bm25":
        return ok("The open book is searched by words (LADDER_RETRIEVAL=bm25)")
    return note(
        "The open book is searched by words alone: its embedding model is not installed "
        f"({INSTALL_HINT}), so questions asked in other words may miss their passage."
    )


async def _trainer_finding(deps: CogDependencies) -> Finding:
    beat = await deps.store(runs.service_beat, name=runs.TRAINER_SERVICE)
    if beat is None:
        return problem("No trainer service has ever run on this store: start `gradschool trainer`.")
    interval = float(beat.detail.get("check_interval_s", deps.settings.train.check_interval_s))
    age = utcnow() - beat.beat_at
    latest = await deps.store(runs.latest_run)
    if latest is not None and latest.status == "running" and latest.heartbeat_at is not None:
        stale = timedelta(seconds=deps.settings.train.heartbeat_timeout_s)
        if utcnow() - latest.heartbeat_at < stale:
            return ok(f"Trainer training run #{latest.id}")
    if age > timedelta(seconds=TRAINER_LATE_CHECKS * interval):
        return problem(
            f"The trainer service last checked in {_ago(age)} ago (it checks every {interval:.0f} s): "
            "is `gradschool trainer` running?"
        )
    return ok(f"Trainer service seen {_ago(age)} ago")


def _ago(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    return f"{seconds // 60} min" if seconds < 7200 else f"{seconds // 3600} h"


class Doctor(commands.Cog):
    """/doctor (admins)."""

    def __init__(self, bot: AnyBot, deps: CogDependencies) -> None:
        self.bot = bot
        self.deps = deps
        self.settings = deps.settings  # admin_only reads the admins from here
        show_admin_commands_to_admins(self, self.settings.discord)

    async def cog_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await answer_command_error(interaction, error)

    @app_commands.command(name="doctor", description="Check what I need in this channel and server (admins).")
    @admin_command
    async def doctor(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        findings = [
            *channel_findings(interaction.channel),
            *intent_findings(self.bot),
            *await command_findings(self.bot, interaction.guild, self.settings.discord.guild_ids),
            *await service_findings(self.deps),
        ]
        lines = [f"{finding.mark} {finding.text}" for finding in findings]
        if any(finding.mark == "❌" for finding in findings) and self.bot.application_id is not None:
            lines.append(f"Invite link with every permission I need: <{invite_url(self.bot.application_id)}>")
        await interaction.followup.send(fit_lines(lines), ephemeral=True)
