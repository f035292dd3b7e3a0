"""The run database's schema revision: fresh, old and newer databases, on both backends.

`fixtures/run_v1.db` was written by the release before schema versioning (commit 69f09f0) and
`fixtures/run_pre_workers.db` by the one before multi-worker runs (749bcee), each with one
small run, by `fixtures/build_old_database.py`; their `.expected.json` is what that release
read back from them.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from safeturn.errors import StoreError
from safeturn.guard.decisions import DecisionLog
from safeturn.report.terminal import summary_dict
from safeturn.run.database import database_engine, database_url, switch_to_wal
from safeturn.run.engine import EvalSettings, start_run
from safeturn.run.migrate import MIGRATIONS, REVISIONS, SCHEMA_REVISION, VERSION_TABLE
from safeturn.run.results import load_results
from safeturn.run.store import RunStore
from safeturn.run.tables import Base, DecisionRow, RunRow
from safeturn.schema import Dialogue, Message, Reply, Sample, Verdict
from tests.databases import Database
from tests.guard._decisions import decision

FIXTURES = Path(__file__).parent / "fixtures"


def _revision(database: Database) -> list[tuple[object, ...]]:
    return database.execute(f"SELECT version_num FROM {VERSION_TABLE}")


def _read_back(store: RunStore, run_id: str) -> dict[str, Any]:
    """What `build_old_database.py` wrote down, read with this code."""
    run = store.get_run(run_id)
    return {
        "run_id": run.id,
        "status": run.status,
        "config": run.config,
        "samples": [s.model_dump(mode="json") for s in store.load_samples(run_id)],
        "sample_status": {k: list(v) for k, v in sorted(store.sample_status(run_id).items())},
        "calls": [
            {
                "sample_id": c.sample_id,
                "turn": c.turn,
                "role": c.role,
                "request_hash": c.request_hash,
                "reply": c.reply,
            }
            for c in store.calls(run_id)
        ],
        "verdicts": [v.model_dump(mode="json") for v in store.verdicts(run_id)],
    }


@pytest.mark.parametrize("name", ["run_v1", "run_pre_workers"])
def test_an_old_release_database_migrates_and_reads_back_identically(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / f"{name}.db"
    shutil.copy(FIXTURES / f"{name}.db", path)
    expected = json.loads((FIXTURES / f"{name}.expected.json").read_text(encoding="utf-8"))
    store = RunStore(path)
    run_id = expected["run_id"]
    assert [r.id for r in store.list_runs()] == [run_id]
    got = _read_back(store, run_id)
    assert got == {key: expected[key] for key in got}
    assert got["sample_status"]["old-3"] == ["error", "RuntimeError: backend went away"]
    assert len(got["calls"]) == 6 and len(got["verdicts"]) == 6, "a real run, not an empty one"
    for call in expected["calls"]:  # a resume finds every stored call under its stored key
        cached = store.cached_reply(run_id, call["request_hash"])
        assert cached == Reply.model_validate(call["reply"])
    results = load_results(store, run_id)
    assert [o.sample.id for o in results.errors()] == expected["errors"]
    if name == "run_v1":  # the release before this one: the very same summary numbers
        summary = json.loads(json.dumps(summary_dict(results)))  # as the JSON file holds it
        assert summary.pop("schema_version") == 1
        assert summary == expected["summary"]
    store.close()
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        assert MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE}
        ).get_current_heads() == (SCHEMA_REVISION,)
        tables = set(inspect(connection).get_table_names())
    engine.dispose()
    assert {"run_workers", "sample_claims", "guard_decisions"} <= tables


def test_a_migrated_old_database_takes_new_runs_and_workers(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(FIXTURES / "run_pre_workers.db", path)
    store = RunStore(path, durability="sync")
    run_id = start_run(store, [_sample("new")], EvalSettings(model="m"))
    store.record_call(
        run_id, sample_id="new", turn=1, role="target", key="k", reply=Reply(text="x", model="m")
    )
    from safeturn.run.claims import RunWorker

    with RunWorker(store, run_id) as worker:
        assert worker.claim() == ["new"]
    store.close()


def _sample(sample_id: str) -> Sample:
    return Sample(id=sample_id, source="unit", dialogue=Dialogue(messages=[Message.user("hi")]))


def test_a_fresh_database_is_at_the_current_revision(database: Database) -> None:
    RunStore(database.target).close()
    assert _revision(database) == [(SCHEMA_REVISION,)]
    RunStore(database.target).close()  # opening again migrates nothing
    assert _revision(database) == [(SCHEMA_REVISION,)]


def test_migrations_match_the_tables(database: Database) -> None:
    """A new column or table in `run/tables.py` without a revision fails here."""
    RunStore(database.target).close()
    engine = database_engine(database_url(database.target))
    with engine.connect() as connection:
        # SQLite keeps the VARCHAR lengths of revision 1 (it ignores them): types on PostgreSQL.
        opts = {"compare_type": database.kind == "postgresql"}
        diff = compare_metadata(MigrationContext.configure(connection, opts=opts), Base.metadata)
    engine.dispose()
    assert [d for d in diff if not _is_version_table(d)] == []


def _is_version_table(diff: Any) -> bool:
    return bool(diff[0] == "remove_table" and diff[1].name == VERSION_TABLE)


def test_the_revision_list_matches_the_migration_scripts() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(config)
    chain = [rev.revision for rev in reversed(list(script.walk_revisions()))]
    assert tuple(chain) == REVISIONS
    assert script.get_current_head() == SCHEMA_REVISION


def _create_all(target: str, *tables: str) -> None:
    """What the release before versioning did: `create_all`, each module its own tables."""
    engine = database_engine(database_url(target))
    chosen = [Base.metadata.tables[name] for name in tables] or None
    Base.metadata.create_all(engine, tables=chosen)
    engine.dispose()


def test_an_unversioned_current_database_is_adopted_with_its_rows(database: Database) -> None:
    run_tables = [t for t in Base.metadata.tables if t != "guard_decisions"]
    _create_all(database.target, *run_tables)  # a store-only database: no decision table
    database.execute(
        "INSERT INTO runs (id, kind, config, status, created_at) "
        "VALUES ('r1', 'eval', '{\"model\": \"m\"}', 'done', '2026-01-02 03:04:05')"
    )
    store = RunStore(database.target)
    assert [(r.id, r.config, r.status) for r in store.list_runs()] == [
        ("r1", {"model": "m"}, "done")
    ]
    store.close()
    assert _revision(database) == [(SCHEMA_REVISION,)]
    assert database.execute("SELECT COUNT(*) FROM guard_decisions") == [(0,)], "created"


async def test_a_decision_log_only_database_is_adopted(database: Database) -> None:
    _create_all(database.target, "guard_decisions")
    log = DecisionLog(database.target)
    log.write([decision("d1")])
    await log.aclose()
    store = RunStore(database.target)
    run_id = start_run(store, [_sample("s")], EvalSettings(model="m"))
    store.close()
    assert _revision(database) == [(SCHEMA_REVISION,)]
    rows = DecisionLog(database.target).rows()
    assert [r.decision_id for r in rows] == ["d1"] and run_id


@pytest.mark.parametrize("worker_tables", [False, True], ids=["pre-workers", "69f09f0"])
def test_a_pre_worker_database_takes_long_ids_after_migrating(
    database: Database, worker_tables: bool
) -> None:
    """Revision 1's VARCHAR(255) sample ids become TEXT: a 400-character id then fits.

    With `worker_tables`, the database is one that the release before versioning opened: it
    added the worker tables to the old schema but never widened the keys.
    """
    from alembic import command

    from safeturn.run.migrate import _locked

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = database_engine(database_url(database.target))
    with engine.connect() as connection, _locked(connection):
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    engine.dispose()
    database.execute(f"DROP TABLE {VERSION_TABLE}")  # as the release before versioning made it
    if worker_tables:
        _create_all(database.target, "run_workers", "sample_claims")
    store = RunStore(database.target, durability="sync")
    long_id = "s/" + "x" * 400
    run_id = start_run(store, [_sample(long_id)], EvalSettings(model="m"))
    verdict = Verdict(sample_id=long_id, turn=1, judge="j" * 300, label="safe")
    store.record_verdict(run_id, verdict)
    assert store.verdicts(run_id) == [verdict]
    store.close()
    if database.kind == "postgresql":
        assert database.execute(
            "SELECT data_type FROM information_schema.columns"
            " WHERE table_name = 'samples' AND column_name = 'sample_id'"
        ) == [("text",)]
    assert _revision(database) == [(SCHEMA_REVISION,)]


def test_a_newer_database_is_refused_naming_both_revisions(database: Database) -> None:
    RunStore(database.target).close()
    database.execute(f"UPDATE {VERSION_TABLE} SET version_num = '0099'")
    for opener in (RunStore, DecisionLog):
        with pytest.raises(StoreError) as caught:
            opener(database.target)
        message = str(caught.value)
        assert "'0099'" in message and f"'{SCHEMA_REVISION}'" in message
        assert "upgrade safeturn" in message
    assert _revision(database) == [("0099",)], "left as it was"


def test_stores_opening_one_new_database_at_once_migrate_it_once(database: Database) -> None:
    failures: list[BaseException] = []

    def open_store() -> None:
        try:
            RunStore(database.target).close()
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert _revision(database) == [(SCHEMA_REVISION,)]


def test_one_metadata_holds_the_run_and_decision_tables() -> None:
    assert RunRow.metadata is DecisionRow.metadata is Base.metadata
    assert {"runs", "model_calls", "verdicts", "guard_decisions"} <= set(Base.metadata.tables)


class _RacingCursor:
    """A cursor whose WAL switch is refused `refusals` times, as SQLite refuses the loser of
    two connections upgrading their shared locks at once (no busy handler is called)."""

    def __init__(self, refusals: int, message: str = "database is locked") -> None:
        self.refusals, self.message, self.calls = refusals, message, 0

    def execute(self, sql: str) -> None:
        assert sql == "PRAGMA journal_mode=WAL"
        self.calls += 1
        if self.calls <= self.refusals:
            raise sqlite3.OperationalError(self.message)


def test_the_wal_switch_is_retried_while_another_connection_makes_it() -> None:
    cursor = _RacingCursor(refusals=3)
    switch_to_wal(cursor)
    assert cursor.calls == 4
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        switch_to_wal(_RacingCursor(refusals=10**6), timeout_s=0.05)  # bounded, not forever
    other = _RacingCursor(refusals=1, message="disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        switch_to_wal(other)
    assert other.calls == 1  # only a lock is worth waiting for
