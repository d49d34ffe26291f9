"""/knowledge review's buttons: a server's admins accept members' corrections into the open book or drop
them."""

from __future__ import annotations

import asyncio
import logging

import discord

from bot.access import is_admin
from bot.replies import NO_MENTIONS, clip, fit_lines
from bot.storage import Store
from store import knowledge
from store.models import Passage
from store.settings import DiscordSettings

logger = logging.getLogger(__name__)

REVIEW_BATCH = 5  # passages per message: two buttons each, one row each (Discord allows 5 rows)
REVIEW_TIMEOUT_S = 600.0  # under the 15 minutes an interaction token lasts, so the buttons can be taken down
SHOWN_TEXT = 280  # of each passage, so five of them fit in one message


class DecisionButton(discord.ui.Button["PassageReview"]):
    """Accept or drop one pending passage; its custom_id names the passage."""

    def __init__(self, passage_id: int, *, accept: bool, row: int) -> None:
        action = "accept" if accept else "drop"
        super().__init__(
            label=f"{action.capitalize()} #{passage_id}",
            style=discord.ButtonStyle.success if accept else discord.ButtonStyle.danger,
            custom_id=f"knowledge:{action}:{passage_id}",
            row=row,
        )
        self.passage_id = passage_id
        self.accept = accept

    async def callback(self, interaction: discord.Interaction) -> None:
        assert self.view is not None
        await self.view.decide(interaction, self.passage_id, accept=self.accept)


class PassageReview(discord.ui.View):
    """Up to REVIEW_BATCH pending passages, with an Accept and a Drop button each, for admins to press."""

    def __init__(
        self, store: Store, settings: DiscordSettings, scope: str, pending: list[Passage], waiting: int
    ) -> None:
        super().__init__(timeout=REVIEW_TIMEOUT_S)
        self.store = store
        self.settings = settings
        self.scope = scope
        self.waiting = waiting  # pending passages beyond this message
        self.lines = {p.id: pending_line(p) for p in pending if p.id is not None}
        self.message: discord.WebhookMessage | None = None  # set once sent, to take the buttons down later
        self._deciding = asyncio.Lock()  # two admins clicking at once must not edit the message out of order
        for row, passage_id in enumerate(self.lines):
            self.add_item(DecisionButton(passage_id, accept=True, row=row))
            self.add_item(DecisionButton(passage_id, accept=False, row=row))

    def content(self, note: str | None = None) -> str:
        """The message: each passage still pending, or what became of it."""
        lines = ["**Waiting for review** (members' corrections; accepted ones join the open book):"]
        lines += self.lines.values()
        if self.waiting:
            lines.append(f"{self.waiting} more wait: run /knowledge review again after these.")
        return fit_lines([*lines, note] if note else lines)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if is_admin(interaction.user, self.settings):
            return True
        await interaction.response.send_message(
            "Sorry, only admins can review the open book.", ephemeral=True
        )
        return False

    async def decide(self, interaction: discord.Interaction, passage_id: int, *, accept: bool) -> None:
        """Accept or drop the passage, then show what happened in place of its line and buttons."""
        await interaction.response.defer()  # within Discord's 3 s; the store may wait on a writer
        who = discord.utils.escape_markdown(interaction.user.display_name)
        async with self._deciding:
            try:
                if accept:
                    await self.store(
                        knowledge.accept_passage,
                        scope=self.scope,
                        passage_id=passage_id,
                        by=interaction.user.id,
                    )
                else:
                    await self.store(knowledge.remove_passage, scope=self.scope, passage_id=passage_id)
                outcome = (
                    f"✅ #{passage_id} accepted by {who}." if accept else f"🗑️ #{passage_id} dropped by {who}."
                )
            except LookupError:  # another admin removed it meanwhile, from here or with /knowledge remove
                outcome = f"#{passage_id} is no longer in the book."
            logger.info("passage %s in %s: %s", passage_id, self.scope, "accepted" if accept else "dropped")
            self.lines[passage_id] = outcome
            for item in list(self.children):
                if isinstance(item, DecisionButton) and item.passage_id == passage_id:
                    self.remove_item(item)
            if not self.children:
                self.stop()
            await interaction.edit_original_response(
                content=self.content(), view=self if self.children else None, allowed_mentions=NO_MENTIONS
            )

    async def on_timeout(self) -> None:
        if self.message is None:
            return
        try:
            note = "(The buttons timed out: run /knowledge review again.)"
            await self.message.edit(content=self.content(note), view=None, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as exc:
            logger.info("could not take the review buttons down: %s", exc)


def pending_line(passage: Passage) -> str:
    """ "**#12** correction by Ana: Thursdays at 19:00 (asked: when is study night?)" """
    text = discord.utils.escape_markdown(clip(" ".join(passage.text.split()), SHOWN_TEXT))
    return f"**#{passage.id}** {discord.utils.escape_markdown(clip(passage.title, 60))}: {text}"
