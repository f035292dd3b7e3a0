"""Bring a run database to the schema this code knows, before the store or the log uses it.

The schema is versioned by Alembic (revisions in `run/migrations/versions/`, the current one in
the table `safeturn_schema_version`). Opening a database:

- at `SCHEMA_REVISION`: nothing to do (one cheap look, without loading Alembic);
- empty, or at an older revision: migrated up, under a lock (PostgreSQL's advisory lock,
  SQLite's write lock), so that workers opening one database at once migrate it once;
- made before the schema was versioned (tables but no version table): adopted at the revision
  whose tables it has (`run_workers` means 0002, else 0001), missing tables created, then
  migrated up;
- at a revision this code does not know (written by a newer safeturn): refused with a
  `StoreError` naming both revisions, since an older safeturn could corrupt it.
"""

from __future__ import annotations

import contextlib
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from safeturn.errors import StoreError
from safeturn.redact import redact_url_credentials

REVISIONS = ("0001", "0002")
"""Every revision of `run/migrations/versions/`, oldest first (a test keeps them in step)."""
SCHEMA_REVISION = REVISIONS[-1]
"""The revision this code reads and writes."""
VERSION_TABLE = "safeturn_schema_version"
"""Alembic's version table, named for safeturn: a shared PostgreSQL database may hold others."""
MIGRATIONS = Path(__file__).with_name("migrations")

_LEGACY_TABLES = frozenset(
    {"runs", "samples", "model_calls", "verdicts", "run_leases", "guard_decisions"}
)
_LOCK_KEY = zlib.crc32(b"safeturn run database migration")
_ALEMBIC = threading.Lock()
"""Alembic's `op` and `context` are module globals: one migration at a time per process."""


def migrate(engine: Engine, shown_url: str) -> None:
    """Migrate the database behind `engine` to `SCHEMA_REVISION` (see the module docstring).

    Raises:
        StoreError: the database cannot be reached, is newer than this code, or a migration
            failed (named with the URL, its password hidden).
    """
    try:
        with engine.connect() as connection:
            current = schema_revision(connection)
        _check_known(current, shown_url)
        if current == SCHEMA_REVISION:
            return
        with _ALEMBIC, engine.connect() as connection, _locked(connection):
            _upgrade(connection, shown_url)
    except DBAPIError as exc:
        detail = redact_url_credentials(str(exc.orig or exc)).strip()
        raise StoreError(f"cannot open the run database {shown_url}: {detail}") from None


def schema_revision(connection: Connection) -> str | None:
    """The database's schema revision, or None where it has no version table (yet)."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    found = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return found[0] if len(found) == 1 else None


def legacy_revision(connection: Connection) -> str | None:
    """The revision an unversioned database matches, by its tables; None when it has none."""
    tables = set(inspect(connection).get_table_names())
    if not tables & _LEGACY_TABLES:
        return None
    return "0002" if "run_workers" in tables else "0001"


def _check_known(current: str | None, shown_url: str) -> None:
    if current is not None and current not in REVISIONS:
        raise StoreError(
            f"the run database {shown_url} has schema revision {current!r}, newer than this "
            f"safeturn knows (it reads revision {SCHEMA_REVISION!r} and older): a newer "
            "safeturn wrote it; upgrade safeturn (pip install -U safeturn) to open it"
        )


def _upgrade(connection: Connection, shown_url: str) -> None:
    """Under the lock: look again (another process may have migrated), adopt, upgrade."""
    from alembic import command
    from alembic.config import Config

    from safeturn.run.migrations.adopt import ADOPT_OPTION

    current = schema_revision(connection)
    _check_known(current, shown_url)
    if current == SCHEMA_REVISION:
        return
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    # An unversioned database is adopted through every revision, not stamped at the one its
    # tables match: a PostgreSQL one that an older safeturn gave the worker tables still has
    # the narrow keys revision 0002 widens. Adopting, a table or index already there is kept.
    adopt = current is None and legacy_revision(connection) is not None
    config.attributes[ADOPT_OPTION] = adopt
    command.upgrade(config, "head")


@contextlib.contextmanager
def _locked(connection: Connection) -> Iterator[None]:
    """One transaction that holds the database's migration lock, committed at the end."""
    if connection.dialect.name == "postgresql":
        with connection.begin():
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            yield
    elif connection.dialect.name == "sqlite":
        # pysqlite would run DDL outside any transaction: take the write lock now, for all of it.
        with connection.begin():
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            yield
    else:
        with connection.begin():
            yield
