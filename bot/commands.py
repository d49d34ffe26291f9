"""Slash commands: training, adapters, people's data choices, and the stats chart."""

from __future__ import annotations

import asyncio
import io
import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.access import (
    ON_OFF,
    admin_command,
    answer_command_error,
    command_scope,
    public_command,
    show_admin_commands_to_admins,
)
from bot.charts import votes_chart
from bot.conversation import without_surrogates
from bot.dependencies import AnyBot, CogDependencies
from bot.reasons import REASON_LABELS
from bot.replies import NO_MENTIONS, clip, fit_lines
from bot.storage import Store
from bot.swap import AdapterSwap
from bot.training import RunWatcher, metrics_text
from store import communities, crud, registry, runs
from store.models import AdapterVersion
from store.registry import InvalidTransition
from store.scopes import GLOBAL, guild_scope

logger = logging.getLogger(__name__)

VOTES_SHOWN = 15  # versions /status lists by 👍-rate (the newest); /adapters has them all


class Commands(commands.Cog):
    """/retrain, /status, /adapters, /rollback, /activate, /share-data, /optout, /optin, /forget-me, /stats;
    those about adapters and votes act on the server they are used in (its scope)."""

    def __init__(self, bot: AnyBot, deps: CogDependencies) -> None:
        self.bot = bot
        self.store = deps.store
        self.settings = deps.settings
        self.server = deps.server
        self.runs = RunWatcher(bot, deps.store, deps.settings.discord.progress_poll_s)
        self._resuming: asyncio.Task[None] | None = None
        show_admin_commands_to_admins(self, self.settings.discord)

    @property
    def swap(self) -> AdapterSwap:
        """The hot-swap cog `install` adds beside this one: /rollback and /activate switch through it."""
        swap = self.bot.get_cog(AdapterSwap.__cog_name__)
        assert isinstance(swap, AdapterSwap)
        return swap

    async def cog_load(self) -> None:
        self._resuming = asyncio.create_task(self.runs.resume(), name="resume-training-runs")

    async def cog_unload(self) -> None:
        if self._resuming is not None:
            self._resuming.cancel()
            await asyncio.gather(self._resuming, return_exceptions=True)
        await self.runs.close()

    async def scope_of(self, interaction: discord.Interaction) -> str:
        """The scope a command acts on: the server it is used in (TRAIN_SCOPE=guild), else the global one."""
        return await command_scope(self.store, self.settings.train, interaction)

    async def cog_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await answer_command_error(interaction, error)

    @app_commands.command(name="retrain", description="Train a new adapter on the feedback so far (admins).")
    @admin_command
    async def retrain(self, interaction: discord.Interaction) -> None:
        channel = interaction.channel
        if not isinstance(channel, discord.abc.Messageable):
            await interaction.response.send_message("Run /retrain in a text channel.", ephemeral=True)
            return
        # Discord forgets an interaction not answered within 3 s, and the store may wait on a writer longer
        await interaction.response.defer(ephemeral=True, thinking=True)
        progress = await channel.send("⏳ Queuing a training run…", allowed_mentions=NO_MENTIONS)
        run = await self.store(
            runs.queue_training_run,
            scope=await self.scope_of(interaction),
            reason="admin",
            requested_by=interaction.user.id,
            notify_channel_id=channel.id,
            notify_message_id=progress.id,
        )
        if run.notify_message_id != progress.id:  # one was queued already; point at its message instead
            await progress.delete()
            await interaction.followup.send(
                f"Training run #{run.id} is already queued; its progress message will show how it goes.",
                ephemeral=True,
            )
            return
        assert run.id is not None
        self.runs.watch(run.id)
        await interaction.followup.send(
            f"Queued training run #{run.id}. I'll keep the progress message updated.", ephemeral=True
        )

    @app_commands.command(name="status", description="The active adapter, its metrics and how people vote.")
    @public_command
    async def status(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        scope = await self.scope_of(interaction)
        active = await self.store(registry.active_version, scope=scope)
        votes = await self.store(crud.votes_by_adapter, scope=scope)
        last_run = await self.store(runs.latest_run, scope=scope)
        if active is None and scope != GLOBAL:
            shared = await self.store(registry.active_version)
            lines = [
                "**Active adapter:** none of this server's own yet; answering with the shared "
                f"{adapter_label(shared)}{metrics_text(shared)}"
            ]
        else:
            lines = [f"**Active adapter:** {adapter_label(active)}{metrics_text(active)}"]
        if not self.server.runtime_adapters:
            lines.append(f"**Serving:** {self.server.describe()}: trained versions cannot go live")
        for failing in {GLOBAL, scope}:
            if (failed := self.swap.failed(failing)) is not None:
                lines.append(f"**Could not serve {failed[0]}:** {failed[1]}")
        if (canary := self.swap.canary(scope)) is not None:
            lines.append(f"**Canary:** {canary} answers a share of questions while people vote on it")
        if last_run is not None:
            made = f", made {last_run.adapter_version}" if last_run.adapter_version else ""
            lines.append(
                f"**Last run:** #{last_run.id} {last_run.status} ({last_run.reason}{made}), "
                f"{discord.utils.format_dt(last_run.created_at, 'R')}"
            )
        lines.append("**👍-rate per version:**" if votes else "**Votes:** none yet")
        newest = sorted(votes.items(), key=lambda item: _version_order(item[0]), reverse=True)
        for adapter, (up, down) in newest[:VOTES_SHOWN]:
            lines.append(f"• {adapter or 'base'}: {up / (up + down):.0%} 👍 ({up} 👍, {down} 👎)")
        if len(newest) > VOTES_SHOWN:
            lines.append(f"…and {len(newest) - VOTES_SHOWN} older versions (see /adapters).")
        await interaction.followup.send(
            fit_lines(lines, more="…and {count} more lines."), allowed_mentions=NO_MENTIONS
        )

    @app_commands.command(name="adapters", description="Every adapter version, newest first.")
    @public_command
    async def adapters(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        scope = await self.scope_of(interaction)
        versions = await self.store(registry.list_versions, scope=scope)
        if not versions:
            await interaction.followup.send(
                "No adapters yet: I'm the base model."
                if scope == GLOBAL
                else "No adapters of this server's own yet; it is answered with the shared one."
            )
            return
        votes = await self.store(crud.votes_by_adapter, scope=scope)
        lines = []
        for version in versions:
            up, down = votes.get(version.name, (0, 0))
            rate = f", {up}/{up + down} 👍" if up + down else ""
            lines.append(
                f"• **{version.name}** {version.status} ({version.method or '?'}, "
                f"{version.created_at:%Y-%m-%d}{rate}){metrics_text(version).replace(chr(10), ' — ')}"
                + (
                    f" — ⚠️ could not be served: {error}"
                    if (error := version.metrics.get("serve_error"))
                    else ""
                )
            )
        await interaction.followup.send(
            fit_lines(lines, more="…and {count} older versions."), allowed_mentions=NO_MENTIONS
        )

    @app_commands.command(
        name="rollback", description="Go back to the adapter active before this one (admins)."
    )
    @admin_command
    async def rollback(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)  # the store and the swap lock may take seconds
        scope = await self.scope_of(interaction)
        if await self.store(registry.active_version, scope=scope) is None:
            already = "the base model" if scope == GLOBAL else "answering with the shared adapter"
            await interaction.followup.send(f"Nothing to roll back: I'm already {already}.")
            return
        restored = await self.store(registry.rollback, scope=scope)
        error = await self.swap.check_now(scope=scope)
        now = restored.name if restored else await self._fallback_label(scope)
        suffix = f"\n⚠️ {error}" if error else ""
        await interaction.followup.send(f"↩️ Rolled back; now answering with {now}.{suffix}")

    @app_commands.command(name="activate", description="Answer with a given adapter version (admins).")
    @app_commands.describe(version="The version name, e.g. v3 (see /adapters).")
    @admin_command
    async def activate(self, interaction: discord.Interaction, version: str) -> None:
        if not isinstance(version, str):  # a client with an old copy of the command sent another type
            raise app_commands.CommandSignatureMismatch(self.activate)
        # the store and the swap lock may take longer than Discord's 3 s; the answer is for the admin only
        await interaction.response.defer(ephemeral=True, thinking=True)
        version = without_surrogates(version)  # Discord's JSON may carry a lone surrogate
        shown = clip(version, 100)  # the reply must fit in a message
        scope = await self.scope_of(interaction)
        target = await self.store(registry.get_version, name=version)
        try:
            if target is None or target.scope != scope:  # another server's versions are not this one's to use
                raise LookupError(version)
            activated = await self.store(registry.activate, name=version, reason=f"by {interaction.user.id}")
        except LookupError:
            await interaction.followup.send(
                f"There is no adapter {shown!r}; see /adapters.", allowed_mentions=NO_MENTIONS
            )
            return
        except InvalidTransition as exc:
            await interaction.followup.send(f"Can't activate {shown}: {exc}.", allowed_mentions=NO_MENTIONS)
            return
        error = await self.swap.check_now(scope=scope)
        if error is not None:  # the registry must not claim a version nobody serves: undo the activation
            restored = await self.store(registry.rollback, scope=scope)
            await self.swap.check_now(scope=scope)
            now = restored.name if restored else await self._fallback_label(scope)
            await interaction.followup.send(clip(f"⚠️ {error}\nStill answering with {now}."))
            return
        await interaction.followup.send(f"🎓 Now answering with {activated.name}.")

    @app_commands.command(name="optout", description="Keep my messages and votes out of training.")
    @public_command
    async def optout(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self.store(crud.set_opt_out, user_id=interaction.user.id, opted_out=True)
        await interaction.followup.send(
            "Done: your messages and votes won't be used for training. /optin undoes this.", ephemeral=True
        )

    @app_commands.command(name="optin", description="Let my messages and votes be used for training.")
    @public_command
    async def optin(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self.store(crud.set_opt_out, user_id=interaction.user.id, opted_out=False)
        await interaction.followup.send(
            "Thanks! Your messages and votes may be used for training again.", ephemeral=True
        )

    @app_commands.command(name="forget-me", description="Delete everything stored about me.")
    @public_command
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
    @public_command
    async def stats(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)  # reading and drawing can take longer than 3 s
        scope = await self.scope_of(interaction)
        daily = await self.store(crud.daily_votes_by_adapter, scope=scope)
        if not daily:
            await interaction.followup.send("No votes yet, so nothing to chart.")
            return
        png = await asyncio.to_thread(votes_chart, daily)
        up, down = sum(row[2] for row in daily), sum(row[3] for row in daily)
        reasons = await self.store(crud.downvote_reasons, scope=scope)
        said = ", ".join(f"{REASON_LABELS[reason]} {count}" for reason, count in reasons.items())
        await interaction.followup.send(
            f"{up + down} votes, {up / (up + down):.0%} 👍." + (f"\n👎 because: {said}." if said else ""),
            file=discord.File(io.BytesIO(png), filename="gradschool-stats.png"),
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command(
        name="share-data",
        description="Let this server's feedback also teach the shared adapter other servers use (admins).",
    )
    @app_commands.describe(
        share="on: this server's feedback joins the shared pool; off (the default): it doesn't"
    )
    @app_commands.choices(share=ON_OFF)
    @admin_command
    async def share_data(self, interaction: discord.Interaction, share: str) -> None:
        if interaction.guild_id is None or self.settings.train.scope == GLOBAL:
            text = (
                "Use /share-data in a server."
                if interaction.guild_id is None
                else "This bot learns one shared adapter from every server (TRAIN_SCOPE=global), so there is "
                "nothing to choose."
            )
            await interaction.response.send_message(text, ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        on = share == "on"
        await self.store(
            communities.set_share_data,
            scope=guild_scope(interaction.guild_id),
            share=on,
            by=interaction.user.id,
        )
        logger.info("server %s: data sharing %s by %s", interaction.guild_id, share, interaction.user.id)
        await interaction.followup.send(
            "This server's feedback will also teach the shared adapter (from the next training run)."
            if on
            else "This server's feedback now teaches only its own adapter.",
            ephemeral=True,
        )

    async def _fallback_label(self, scope: str) -> str:
        """What answers a scope with no active version of its own."""
        if scope == GLOBAL:
            return "the base model"
        shared = await self.store(registry.active_version)
        return f"the shared {shared.name}" if shared else "the base model"


def _version_order(name: str | None) -> tuple[int, str]:
    """Sort key of version names, oldest first: the base model, then v1, v2, ..., v10 by number."""
    if name is None:
        return (-1, "")
    digits = name.removeprefix("v")
    return (int(digits), name) if digits.isdigit() else (0, name)


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
        await interaction.response.edit_message(content="Deleting…", view=None)  # within Discord's 3 s
        removed = await self.store(crud.forget_user, user_id=self.user_id)
        logger.info("forgot user %s: %s", self.user_id, removed)
        summary = ", ".join(f"{count} {kind}" for kind, count in removed.items())
        await interaction.edit_original_response(
            content=f"Done. Deleted {summary}. You're opted out of training; /optin undoes that."
        )

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary, custom_id="forget:cancel")
    async def cancel(
        self, interaction: discord.Interaction, button: discord.ui.Button[ForgetConfirmation]
    ) -> None:
        self.stop()
        await interaction.response.edit_message(content="Nothing was deleted.", view=None)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.user_id
