"""Opening a run database, SQLite or PostgreSQL, and column types that act alike on both.

The run store and the guard's decision log keep their tables in one database: a file path
(SQLite) or a SQLAlchemy URL such as `postgresql+psycopg://user:pass@host/db`. The tests run
the store on both. Where the two backends differ, the types here make them agree: PostgreSQL
refuses NUL characters in text (a model may write one), and SQLite gives back naive datetimes.
"""

from __future__ import annotations

import re
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Text, create_engine, event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import ArgumentError
from sqlalchemy.types import TypeDecorator

from safeturn.errors import PrerequisiteError, StoreError
from safeturn.redact import redact_url_credentials

POSTGRES_INSTALL = "pip install 'safeturn[postgres]'"
_COLLAPSED_URL = re.compile(r"(sqlite|postgres(ql)?|mysql|mariadb|oracle|mssql)(\+\w+)?:/[^/]")
"""`postgresql+psycopg:/u@h/db`: what `Path("postgresql+psycopg://u@h/db")` makes of a URL."""


def database_url(target: str | Path) -> str:
    """Accept a SQLAlchemy URL or a plain file path (→ SQLite); `postgres://` as PostgreSQL."""
    text = str(target)
    collapsed = _COLLAPSED_URL.match(text)
    if collapsed:  # shown up to the scheme only: the rest may hold a password
        raise StoreError(
            f"{collapsed.group(0)[:-1]}... looks like a database URL whose '//' was collapsed "
            "to '/' (it went through a file path); pass the URL as a string"
        )
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser()}"
    if text.startswith("postgres://"):  # the form many hosting services print
        return "postgresql://" + text.removeprefix("postgres://")
    return text


def database_engine(url: str) -> Engine:
    """An engine for a run database, shared by the run store and the guard's decision log.

    SQLite gets WAL, so a proxy or a run can write while a report reads, and a busy timeout,
    so several writers wait instead of failing. A server database gets `pool_pre_ping`: a
    long-lived proxy or run survives the server dropping its idle connections (a restart).
    """
    shown = redact_url_credentials(url)
    sqlite = url.startswith("sqlite")
    try:
        engine = create_engine(url, pool_pre_ping=not sqlite)
    except ImportError as exc:
        if url.startswith("postgresql"):
            raise PrerequisiteError(
                f"the run database {shown} needs the PostgreSQL driver ({exc.name} is not "
                f"installed): {POSTGRES_INSTALL}"
            ) from None
        raise PrerequisiteError(
            f"the run database {shown} needs a driver that is not installed: {exc.name}"
        ) from None
    except ArgumentError as exc:  # NoSuchModuleError too: an unknown scheme
        raise StoreError(f"{shown} is not a database URL SQLAlchemy can open: {exc}") from None
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite would give back naive ones)."""

    impl = DateTime
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store UTC (SQLite keeps no offset); a naive value is taken as UTC already."""
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Aware, in UTC, whatever the server's time zone."""
        if not isinstance(value, datetime):
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class FreeText(TypeDecorator[str]):
    """Text a model or an error message wrote: NUL becomes U+FFFD, on every backend.

    PostgreSQL cannot store NUL in text, and one verdict's rationale must not stop a run.
    Not for keys: a key must read back exactly as it was written.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        """Replace NUL characters."""
        return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long a SQLite connection waits for another one's lock before it fails."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def switch_to_wal(cursor: Any, *, timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> None:
    """`PRAGMA journal_mode=WAL`, retried while other connections make the same switch.

    Connections opening one new database at once each read it under a shared lock and then
    ask for the exclusive lock the switch needs; SQLite answers one of them "database is
    locked" at once rather than waiting (waiting could deadlock), so the busy timeout does not
    cover it. About 1 in 200 openings of four at once failed that way (measured with sqlite3).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
