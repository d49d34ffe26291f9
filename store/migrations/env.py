"""Alembic environment: migrates the connection `store.db.upgrade` hands over, against SQLModel's metadata.

There is no alembic.ini; `store.db.alembic_config(connection)` builds the config in code, and the
connection it carries in `config.attributes["connection"]` is used as it is (its transaction belongs to
the caller), so `upgrade(database)` reuses the database's engine and its SQLite settings.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import store.models  # noqa: F401  (registers the tables on SQLModel.metadata)


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("no connection to migrate: build the config with store.db.alembic_config(connection)")
run_migrations(connection)
