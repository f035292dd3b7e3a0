"""A run database per test, on either backend, and raw access to it from outside the store.

The run store's tests take the `database` fixture (tests/conftest.py), which runs each of them
twice: on a SQLite file and on a fresh database of a real PostgreSQL server. What a test needs
to see or do behind the store's back (committed rows, a trigger that makes writes fail, every
stored byte) goes through here, in the backend's own terms.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["sqlite", "postgresql"]


@dataclass
class Database:
    """One test's run database: `target` is what `RunStore` and the CLI take."""

    kind: Kind
    target: str
    new: Callable[[], str]
    """Another empty database of the same kind (for a second, independent run)."""

    def execute(self, sql: str) -> list[tuple[object, ...]]:
        """Run one statement on a connection of its own and commit; the rows it returned."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.target) as connection:
                return connection.execute(sql).fetchall()
        import psycopg

        with psycopg.connect(libpq_url(self.target), autocommit=True) as connection:
            cursor = connection.execute(sql)
            return list(cursor.fetchall()) if cursor.description else []

    def stored_bytes(self) -> bytes:
        """Everything the database holds: SQLite's files, or every PostgreSQL row as text."""
        if self.kind == "sqlite":
            path = Path(self.target)
            files = sorted(path.parent.glob(path.name + "*"))
            return b"".join(p.read_bytes() for p in files)
        tables = self.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        rows = [self.execute(f'SELECT t::text FROM "{name}" t') for (name,) in tables]
        return "\n".join(str(value) for table in rows for (value,) in table).encode()


def libpq_url(url: str) -> str:
    """A SQLAlchemy `postgresql+psycopg://` URL as libpq takes it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def failing_inserts_sql(kind: Kind, sample_id: str) -> list[str]:
    """A trigger that makes every insert of a call of `sample_id` fail with 'disk says no'."""
    if kind == "sqlite":
        return [
            "CREATE TRIGGER refuse BEFORE INSERT ON model_calls"
            f" WHEN NEW.sample_id = '{sample_id}' BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        ]
    return [
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'disk says no'; END $$",
        "CREATE TRIGGER refuse BEFORE INSERT ON model_calls FOR EACH ROW"
        f" WHEN (NEW.sample_id = '{sample_id}') EXECUTE FUNCTION refuse()",
    ]
