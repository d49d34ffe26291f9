"""Why a 👎: after one, the voter is offered a few reason buttons they may ignore.

Discord lets a bot answer a reaction only with an ordinary message (an ephemeral one must answer an
interaction), so the offer is a small reply under the answer, addressed to the voter without pinging them,
that deletes itself once they choose or after DISCORD_DOWNVOTE_REASON_S; only the voter's clicks count, and
what they are told after is ephemeral. "Other" opens a form for their own words.
"""

from __future__ import annotations

import logging

import discord

from bot.conversation import clean_text
from bot.replies import send_reply
from bot.storage import Store
from store import crud
from store.models import DOWNVOTE_REASONS, DownvoteReason

logger = logging.getLogger(__name__)

REASON_LABELS: dict[str, str] = {
    "wrong": "wrong",
    "too_long": "too long",
    "off_topic": "off-topic",
    "tone": "tone",
    "other": "other",
}


class ReasonOffers:
    """The open offers, one per (answer message, voter), so a repeated 👎 event asks once."""

    def __init__(self, store: Store, timeout_s: float) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self.open: dict[tuple[int, int], ReasonOffer] = {}

    async def offer(
        self,
        channel: discord.abc.Messageable,
        answer: discord.MessageReference,
        voter_id: int,
        generation_id: int,
    ) -> None:
        """Ask `voter_id` why they 👎 the answer (nothing when turned off, or when asking them already)."""
        assert answer.message_id is not None
        key = (answer.message_id, voter_id)
        if self.timeout_s <= 0 or key in self.open:
            return
        view = ReasonOffer(self, key, generation_id)
        self.open[key] = view
        try:
            view.message = await send_reply(
                channel, f"<@{voter_id}>, what was wrong with this answer? (optional)", answer, view=view
            )
        except (discord.HTTPException, discord.RateLimited) as exc:
            logger.info("could not ask %s why the 👎: %s", voter_id, exc)
            await view.close()

    async def withdraw(self, message_id: int, voter_id: int) -> None:
        """The 👎 was taken back: its offer goes."""
        view = self.open.get((message_id, voter_id))
        if view is not None:
            await view.close()


class ReasonButton(discord.ui.Button["ReasonOffer"]):
    """One reason; "other" asks for the voter's own words first."""

    def __init__(self, reason: DownvoteReason, label: str) -> None:
        super().__init__(label=label, style=discord.ButtonStyle.secondary, custom_id=f"reason:{reason}")
        self.reason = reason

    async def callback(self, interaction: discord.Interaction) -> None:
        offer = self.view
        assert offer is not None
        if self.reason == "other":
            await interaction.response.send_modal(OtherReason(offer))
            return
        await interaction.response.send_message("Thanks, noted.", ephemeral=True)
        await offer.record(self.reason, None)


class ReasonOffer(discord.ui.View):
    """The reason buttons under a 👎'd answer; only the voter may press them."""

    def __init__(self, offers: ReasonOffers, key: tuple[int, int], generation_id: int) -> None:
        super().__init__(timeout=offers.timeout_s)
        self.offers = offers
        self.key = key
        self.generation_id = generation_id
        self.message: discord.Message | None = None
        for reason in DOWNVOTE_REASONS:
            label = REASON_LABELS[reason].capitalize() + ("…" if reason == "other" else "")
            self.add_item(ReasonButton(reason, label))

    @property
    def voter_id(self) -> int:
        return self.key[1]

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id == self.voter_id:
            return True
        await interaction.response.send_message("These buttons are for whoever voted 👎.", ephemeral=True)
        return False

    async def record(self, reason: DownvoteReason, text: str | None) -> None:
        """Store the reason with the voter's 👎 (if it is still there), then take the offer down."""
        saved = await self.offers.store(
            crud.set_downvote_reason,
            generation_id=self.generation_id,
            rater_id=self.voter_id,
            reason=reason,
            text=text,
        )
        state = "recorded" if saved else "dropped (the 👎 was taken back)"
        logger.info("👎 reason %s by %s, generation %s: %s", reason, self.voter_id, self.generation_id, state)
        await self.close()

    async def on_timeout(self) -> None:
        await self.close()

    async def close(self) -> None:
        """Forget the offer and delete its message (one deleted already is fine)."""
        self.stop()
        self.offers.open.pop(self.key, None)
        message, self.message = self.message, None
        if message is None:
            return
        try:
            await message.delete()
        except discord.HTTPException as exc:
            logger.info("reason offer %s not deleted: %s", message.id, exc)


class OtherReason(discord.ui.Modal, title="What was wrong?"):
    """The voter's own words for "Other"."""

    text: discord.ui.TextInput[OtherReason] = discord.ui.TextInput(
        label="What was wrong with the answer?",
        style=discord.TextStyle.long,
        max_length=crud.MAX_REASON_TEXT,
        custom_id="reason-text",
    )

    def __init__(self, offer: ReasonOffer) -> None:
        super().__init__()
        self.offer = offer

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message("Thanks, noted.", ephemeral=True)
        await self.offer.record("other", clean_text(self.text.value).strip() or None)
