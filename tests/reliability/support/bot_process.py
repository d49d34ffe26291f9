"""The real bot in a process of its own, against a Discord emulator on 127.0.0.1.

    python -m tests.reliability.support.bot_process EMULATOR_URL

Settings come from the environment exactly as for `gradschool bot` (DISCORD_TOKEN is the emulator's token),
and it runs the same `gradschool.bot_command.serve`; the one difference is that discord.py is pointed at the
emulator. A test can SIGKILL it and start another.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from gradschool.bot_command import serve
from sim.discord_emulator import point_discord_py_at
from store.settings import load_settings

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    point_discord_py_at(sys.argv[1])
    asyncio.run(serve(load_settings(env_file=None)))
