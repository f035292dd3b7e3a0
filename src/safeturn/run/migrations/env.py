"""Alembic's environment: migrate the connection `safeturn.run.migrate` hands over.

No `alembic.ini` and no URL here: `migrate` opens the database (with the store's engine, its
pragmas and its error messages), locks it and passes the connection in `config.attributes`.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from safeturn.run.migrate import VERSION_TABLE
from safeturn.run.migrations.adopt import ADOPT_OPTION
from safeturn.run.tables import Base


def run_migrations_online() -> None:
    """Run the migrations inside the caller's transaction."""
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("run migrations through safeturn.run.migrate, which opens the database")
    options: dict[str, Any] = {
        ADOPT_OPTION: bool(context.config.attributes.get(ADOPT_OPTION, False))
    }
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        **options,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
