"""What every `gradschool` command shares: the settings of this invocation and the opened store."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from sqlalchemy import Engine as Database

from store import db
from store.settings import Settings, SettingsError, load_settings

logger = logging.getLogger("gradschool")


class Invocation:
    """Settings read once per command run, lazily, so `--help` works with a broken .env."""

    def __init__(self) -> None:
        self.env_file: Path | None = Path(".env")
        self._settings: Settings | None = None

    def reset(self, env_file: Path | None) -> None:
        """Start a new invocation (the CLI callback calls this; tests invoke the app many times)."""
        self.env_file, self._settings = env_file, None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(env_file=self.env_file)
            except SettingsError as exc:
                typer.secho(str(exc), fg=typer.colors.RED, err=True)
                raise typer.Exit(2) from None
            logging.getLogger().setLevel(self._settings.log_level)
        return self._settings


invocation = Invocation()


def open_database(settings: Settings) -> Database:
    """The store's database, migrated to head when STORE_AUTO_UPGRADE is on."""
    database = db.open_store(settings)
    url = database.url.render_as_string(hide_password=True)
    logger.info("store at %s (revision %s)", url, db.current_revision(database))
    return database
