"""The Discord face of gradschool: a standalone bot, or an extension (`await bot.load_extension("bot")`)."""

from __future__ import annotations

import logging

from bot.client import GradschoolBot, Services, install, intents, sync_commands
from bot.dependencies import AnyBot
from store.settings import load_settings

__all__ = ["GradschoolBot", "Services", "install", "intents", "setup", "sync_commands", "teardown"]

logger = logging.getLogger(__name__)

SERVICES_ATTRIBUTE = "gradschool_services"  # set it on your bot before loading to share your own Services
_OWNED = "_gradschool_owns_services"


async def setup(bot: AnyBot) -> None:
    """Add gradschool to an existing discord.py bot, sharing its client.

    The bot's own `gradschool_services` attribute is used when set; otherwise settings come from the
    environment and `.env`, and the store and model are opened here (and closed again by `teardown`).
    """
    services: Services | None = getattr(bot, SERVICES_ATTRIBUTE, None)
    if services is None:
        services = await Services.start(load_settings())
        setattr(bot, SERVICES_ATTRIBUTE, services)
        setattr(bot, _OWNED, True)
    if not bot.intents.message_content:
        logger.warning("the bot lacks the message_content intent: gradschool only sees mentions and DMs")
    await install(bot, services)
    if bot.application_id is not None:  # logged in already (setup_hook or later): publish the commands now
        await sync_commands(bot, services.settings.discord.guild_ids)


async def teardown(bot: AnyBot) -> None:
    """Close what `setup` opened (discord.py removes the cogs and commands itself)."""
    if getattr(bot, _OWNED, False):
        services: Services = getattr(bot, SERVICES_ATTRIBUTE)
        await services.close()
        delattr(bot, SERVICES_ATTRIBUTE)
        delattr(bot, _OWNED)
