"""DDL helpers for revisions that may adopt a database made before the schema was versioned.

`migrate` runs the revisions up to the one an unversioned database matches with the option
`safeturn_adopt`; then a table or an index that is already there is taken as it is instead of
failing the migration. Outside adoption they are plain `op.create_table` / `op.create_index`.
"""

from __future__ import annotations

from typing import Any

from alembic import op
from sqlalchemy import inspect

ADOPT_OPTION = "safeturn_adopt"


def adopting() -> bool:
    """Whether this migration is adopting an unversioned database."""
    return bool(op.get_context().opts.get(ADOPT_OPTION, False))


def create_table(name: str, *elements: Any) -> None:
    """`op.create_table` (with its columns' indexes), unless adopting a table already there."""
    if adopting() and inspect(op.get_bind()).has_table(name):
        return
    op.create_table(name, *elements)


def create_index(name: str, table: str, columns: list[str]) -> None:
    """`op.create_index`, unless adopting a table that already has an index of that name."""
    if adopting() and name in {i["name"] for i in inspect(op.get_bind()).get_indexes(table)}:
        return
    op.create_index(name, table, columns)


def on_sqlite() -> bool:
    """Whether the database is SQLite (which ignores VARCHAR lengths: no widening needed)."""
    return op.get_bind().dialect.name == "sqlite"
