"""Slash commands: training, adapters, people's data choices, and the stats chart."""

from __future__ import annotations

import asyncio
import io
import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.access import NotAdmin, admin_only
from bot.charts import votes_chart
from bot.conversation import without_surrogates
from bot.dependencies import CogDependencies
from bot.replies import NO_MENTIONS
from bot.storage import Store
from bot.swap import AdapterSwap
from bot.training import RunWatcher, metrics_text
from store import crud, registry, runs
from store.models import AdapterVersion
from store.registry import InvalidTransition

logger = logging.getLogger(__name__)


class Commands(commands.Cog):
    """/retrain, /status, /adapters, /rollback, /activate, /optout, /optin, /forget-me, /stats."""

    def __init__(self, bot: commands.Bot, deps: CogDependencies) -> None:
        self.bot = bot
        self.store = deps.store
        self.settings = deps.settings
        self.runs = RunWatcher(bot, deps.store, deps.settings.discord.progress_poll_s)

    @property
    def swap(self) -> AdapterSwap:
        """The hot-swap cog `install` adds beside this one: /rollback and /activate switch through it."""
        swap = self.bot.get_cog(AdapterSwap.__cog_name__)
        assert isinstance(swap, AdapterSwap)
        return swap

    async def cog_load(self) -> None:
        await self.runs.resume()

    async def cog_unload(self) -> None:
        await self.runs.close()

    async def cog_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        name = interaction.command.name if interaction.command else "?"
        if isinstance(error, NotAdmin):
            logger.info("refused /%s to non-admin %s", name, interaction.user.id)
            text = str(error)
        elif isinstance(error, app_commands.CommandSignatureMismatch):  # a client with an old copy of it
            logger.warning("/%s arrived with options it does not have: %s", name, error)
            text = "This command has changed since your Discord app loaded it; reload Discord and try again."
        else:
            logger.exception("/%s failed", name, exc_info=error)
            text = "Sorry, that didn't work; the error is in the bot's log."
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException as exc:
            logger.warning("could not report the error: %s", exc)

    @app_commands.command(name="retrain", description="Train a new adapter on the feedback so far (admins).")
    @admin_only()
    async def retrain(self, interaction: discord.Interaction) -> None:
        channel = interaction.channel
        if not isinstance(channel, discord.abc.Messageable):
            await interaction.response.send_message("Run /retrain in a text channel.", ephemeral=True)
            return
        progress = await channel.send("⏳ Queuing a training run…", allowed_mentions=NO_MENTIONS)
        run = await self.store(
            runs.queue_training_run,
            reason="admin",
            requested_by=interaction.user.id,
            notify_channel_id=channel.id,
            notify_message_id=progress.id,
        )
        if run.notify_message_id != progress.id:  # one was queued already; point at its message instead
            await progress.delete()
            await interaction.response.send_message(
                f"Training run #{run.id} is already queued; its progress message will show how it goes.",
                ephemeral=True,
            )
            return
        assert run.id is not None
        self.runs.watch(run.id)
        await interaction.response.send_message(
            f"Queued training run #{run.id}. I'll keep the progress message updated.", ephemeral=True
        )

    @app_commands.command(name="status", description="The active adapter, its metrics and how people vote.")
    async def status(self, interaction: discord.Interaction) -> None:
        active = await self.store(registry.active_version)
        votes = await self.store(crud.votes_by_adapter)
        last_run = await self.store(runs.latest_run)
        lines = [f"**Active adapter:** {adapter_label(active)}{metrics_text(active)}"]
        if self.swap.canary is not None:
            lines.append(
                f"**Canary:** {self.swap.canary} answers a share of questions while people vote on it"
            )
        lines.append("**👍-rate per version:**" if votes else "**Votes:** none yet")
        for adapter, (up, down) in sorted(votes.items(), key=lambda item: item[0] or ""):
            lines.append(f"• {adapter or 'base'}: {up / (up + down):.0%} 👍 ({up} 👍, {down} 👎)")
        if last_run is not None:
            made = f", made {last_run.adapter_version}" if last_run.adapter_version else ""
            lines.append(
                f"**Last run:** #{last_run.id} {last_run.status} ({last_run.reason}{made}), "
                f"{discord.utils.format_dt(last_run.created_at, 'R')}"
            )
        await interaction.response.send_message("\n".join(lines), allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="adapters", description="Every adapter version, newest first.")
    async def adapters(self, interaction: discord.Interaction) -> None:
        versions = await self.store(registry.list_versions)
        if not versions:
            await interaction.response.send_message("No adapters yet: I'm the base model.")
            return
        votes = await self.store(crud.votes_by_adapter)
        lines = []
        for version in versions[:25]:
            up, down = votes.get(version.name, (0, 0))
            rate = f", {up}/{up + down} 👍" if up + down else ""
            lines.append(
                f"• **{version.name}** {version.status} ({version.method or '?'}, "
                f"{version.created_at:%Y-%m-%d}{rate}){metrics_text(version).replace(chr(10), ' — ')}"
            )
        await interaction.response.send_message("\n".join(lines)[:2000], allowed_mentions=NO_MENTIONS)

    @app_commands.command(
        name="rollback", description="Go back to the adapter active before this one (admins)."
    )
    @admin_only()
    async def rollback(self, interaction: discord.Interaction) -> None:
        if await self.store(registry.active_version) is None:
            await interaction.response.send_message("Nothing to roll back: I'm already the base model.")
            return
        restored = await self.store(registry.rollback)
        error = await self.swap.check_now()
        now = restored.name if restored else "the base model"
        suffix = f"\n⚠️ {error}" if error else ""
        await interaction.response.send_message(f"↩️ Rolled back; now answering with {now}.{suffix}")

    @app_commands.command(name="activate", description="Answer with a given adapter version (admins).")
    @app_commands.describe(version="The version name, e.g. v3 (see /adapters).")
    @admin_only()
    async def activate(self, interaction: discord.Interaction, version: str) -> None:
        if not isinstance(version, str):  # a client with an old copy of the command sent another type
            raise app_commands.CommandSignatureMismatch(self.activate)
        version = without_surrogates(version)  # Discord's JSON may carry a lone surrogate
        shown = version if len(version) <= 100 else f"{version[:99]}…"  # the reply must fit in a message
        try:
            activated = await self.store(registry.activate, name=version, reason=f"by {interaction.user.id}")
        except LookupError:
            await interaction.response.send_message(
                f"There is no adapter {shown!r}; see /adapters.", ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        except InvalidTransition as exc:
            await interaction.response.send_message(
                f"Can't activate {shown}: {exc}.", ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        error = await self.swap.check_now()
        if error is not None:  # the registry must not claim a version nobody serves: undo the activation
            restored = await self.store(registry.rollback)
            await self.swap.check_now()
            now = restored.name if restored else "the base model"
            await interaction.response.send_message(f"⚠️ {error}\nStill answering with {now}.")
            return
        await interaction.response.send_message(f"🎓 Now answering with {activated.name}.")

    @app_commands.command(name="optout", description="Keep my messages and votes out of training.")
    async def optout(self, interaction: discord.Interaction) -> None:
        await self.store(crud.set_opt_out, user_id=interaction.user.id, opted_out=True)
        await interaction.response.send_message(
            "Done: your messages and votes won't be used for training. /optin undoes this.", ephemeral=True
        )

    @app_commands.command(name="optin", description="Let my messages and votes be used for training.")
    async def optin(self, interaction: discord.Interaction) -> None:
        await self.store(crud.set_opt_out, user_id=interaction.user.id, opted_out=False)
        await interaction.response.send_message(
            "Thanks! Your messages and votes may be used for training again.", ephemeral=True
        )

    @app_commands.command(name="forget-me", description="Delete everything stored about me.")
    async def forget_me(self, interaction: discord.Interaction) -> None:
        view = ForgetConfirmation(self.store, interaction.user.id, self.settings.discord.forget_confirm_s)
        await interaction.response.send_message(
            "This deletes your messages, the answers you asked for, your votes and your corrections, "
            "and opts you out of training. It can't be undone. Are you sure?",
            view=view,
            ephemeral=True,
        )
        view.asked = interaction

    @app_commands.command(
        name="stats", description="A chart of 👍-rate and votes per adapter version over time."
    )
    async def stats(self, interaction: discord.Interaction) -> None:
        daily = await self.store(crud.daily_votes_by_adapter)
        if not daily:
            await interaction.response.send_message("No votes yet, so nothing to chart.")
            return
        await interaction.response.defer(thinking=True)  # drawing can take longer than Discord's 3 s
        png = await asyncio.to_thread(votes_chart, daily)
        up, down = sum(row[2] for row in daily), sum(row[3] for row in daily)
        await interaction.followup.send(
            f"{up + down} votes, {up / (up + down):.0%} 👍.",
            file=discord.File(io.BytesIO(png), filename="gradschool-stats.png"),
            allowed_mentions=NO_MENTIONS,
        )


def adapter_label(version: AdapterVersion | None) -> str:
    """ "v3 (sft+dpo)", or the base model."""
    if version is None:
        return "none (base model)"
    return f"{version.name} ({version.method})" if version.method else version.name


class ForgetConfirmation(discord.ui.View):
    """Delete / Cancel buttons for /forget-me; only the person who asked sees them (ephemeral)."""

    def __init__(self, store: Store, user_id: int, timeout_s: float) -> None:
        super().__init__(timeout=timeout_s)
        self.store = store
        self.user_id = user_id
        self.asked: discord.Interaction | None = None  # the /forget-me interaction, to edit on timeout

    async def on_timeout(self) -> None:
        if self.asked is None:
            return
        try:
            await self.asked.edit_original_response(content="Timed out; nothing was deleted.", view=None)
        except discord.HTTPException as exc:  # the interaction token lasts 15 minutes
            logger.info("could not mark /forget-me as timed out: %s", exc)

    @discord.ui.button(
        label="Delete everything", style=discord.ButtonStyle.danger, custom_id="forget:confirm"
    )
    async def confirm(
        self, interaction: discord.Interaction, button: discord.ui.Button[ForgetConfirmation]
    ) -> None:
        self.stop()
        removed = await self.store(crud.forget_user, user_id=self.user_id)
        logger.info("forgot user %s: %s", self.user_id, removed)
        summary = ", ".join(f"{count} {kind}" for kind, count in removed.items())
        await interaction.response.edit_message(
            content=f"Done. Deleted {summary}. You're opted out of training; /optin undoes that.", view=None
        )

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary, custom_id="forget:cancel")
    async def cancel(
        self, interaction: discord.Interaction, button: discord.ui.Button[ForgetConfirmation]
    ) -> None:
        self.stop()
        await interaction.response.edit_message(content="Nothing was deleted.", view=None)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.user_id
