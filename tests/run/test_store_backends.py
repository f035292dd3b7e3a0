"""Where SQLite and PostgreSQL differ, the run database must not: lengths, NUL, time zones,
dropped connections, and the errors a user sees for a URL that cannot work."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from safeturn.cli import app
from safeturn.errors import PrerequisiteError, StoreError
from safeturn.guard.decisions import Decision, DecisionLog
from safeturn.run.engine import EvalSettings, start_run
from safeturn.run.store import RunStore
from safeturn.schema import Dialogue, Message, Reply, Sample, Verdict, write_jsonl
from tests.databases import Database

runner = CliRunner()
LONG_ID = "sample/" + "x" * 400
LONG_MODEL = "openai:http://gpu-host:8000/v1#" + "m" * 600


def _sample(sample_id: str) -> Sample:
    return Sample(id=sample_id, source="unit", dialogue=Dialogue(messages=[Message.user("hi")]))


def test_long_names_and_nul_characters_are_stored_alike(database: Database) -> None:
    store = RunStore(database.target, durability="sync")
    run_id = start_run(store, [_sample(LONG_ID), _sample("s2")], EvalSettings(model="m"))
    reply = Reply(text="raw \x00 reply", model=LONG_MODEL)
    store.record_call(run_id, sample_id=LONG_ID, turn=1, role="target", key="k", reply=reply)
    judge = "llm:" + "j" * 300
    verdict = Verdict(sample_id=LONG_ID, turn=1, judge=judge, label="safe", rationale="a\x00b")
    store.record_verdict(run_id, verdict)
    store.mark_sample(run_id, LONG_ID, "done")
    store.mark_sample(run_id, "s2", "error", "bad byte \x00 in line 3")
    store.close()

    reopened = RunStore(database.target)
    (call,) = reopened.calls(run_id)
    assert (call.sample_id, call.model) == (LONG_ID, LONG_MODEL)
    assert call.reply["text"] == "raw \x00 reply", "JSON keeps NUL on both backends"
    (stored,) = reopened.verdicts(run_id)
    assert (stored.judge, stored.rationale) == (judge, "a\ufffdb")
    assert reopened.sample_status(run_id) == {
        LONG_ID: ("done", None),
        "s2": ("error", "bad byte \ufffd in line 3"),
    }
    assert [s.id for s in reopened.load_samples(run_id)] == [LONG_ID, "s2"]
    reopened.close()


def test_times_read_back_in_utc_with_their_zone(database: Database) -> None:
    before = datetime.now(UTC)
    store = RunStore(database.target)
    run_id = start_run(store, [_sample("s")], EvalSettings(model="m"))
    store.finish_run(run_id, "done")
    run = store.get_run(run_id)
    assert run.created_at.utcoffset() == timedelta(0)
    assert run.finished_at is not None and run.finished_at.utcoffset() == timedelta(0)
    assert before <= run.created_at <= run.finished_at <= datetime.now(UTC)
    store.close()


async def test_decision_log_stores_any_model_name_and_error(database: Database) -> None:
    log = DecisionLog(database.target)
    decision = Decision(
        decision_id="d1",
        model=LONG_MODEL,
        moderator="classifier:" + "/very/long/path" * 30,
        mode="inject",
        action=None,
        outcome="upstream_error",
        status=502,
        flagged=False,
        turns=1,
        images=0,
        stream=False,
        total_ms=2.5,
        error="upstream said \x00",
    )
    assert log.submit(decision)
    await log.flush()
    (row,) = log.rows()
    assert (row.model, row.error, row.total_ms) == (LONG_MODEL, "upstream said \ufffd", 2.5)
    assert row.created_at.utcoffset() == timedelta(0)
    await log.aclose()


def test_a_store_outlives_the_server_dropping_its_connections(database: Database) -> None:
    if database.kind == "sqlite":
        pytest.skip("SQLite has no server connections to drop")
    store = RunStore(database.target, durability="sync")
    run_id = start_run(store, [_sample("s")], EvalSettings(model="m"))
    killed = database.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    assert killed, "the store held pooled connections"
    store.record_call(
        run_id, sample_id="s", turn=1, role="target", key="k", reply=Reply(text="x", model="m")
    )
    assert [c.request_hash for c in store.calls(run_id)] == ["k"]
    store.close()


def test_runs_lists_a_database_by_url_without_its_password(database: Database) -> None:
    store = RunStore(database.target)
    run_id = start_run(store, [_sample("s")], EvalSettings(model="scripted:comply"))
    store.close()
    result = runner.invoke(app, ["runs", "--db", database.target])
    assert result.exit_code == 0, result.output
    assert run_id in result.output
    if database.kind == "postgresql":
        password = str(make_url(database.target).password)
        assert password not in result.output
        assert "postgresql+psycopg://127.0.0.1:" in result.output


def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    url = "postgresql+psycopg://me:hunter2-secret@127.0.0.1:1/runs"
    with pytest.raises(StoreError, match="cannot open the run database") as info:
        RunStore(url)
    message = str(info.value)
    assert "postgresql+psycopg://127.0.0.1:1/runs" in message and "hunter2" not in message
    result = runner.invoke(app, ["runs", "--db", url])
    assert result.exit_code == 1 and "cannot open the run database" in result.output
    assert "hunter2" not in result.output


def test_a_postgres_url_without_the_driver_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    with pytest.raises(PrerequisiteError, match=r"pip install 'safeturn\[postgres\]'") as info:
        RunStore("postgres://me:hunter2@db.example/runs")
    assert "postgresql://db.example/runs" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_a_url_that_went_through_a_path_is_refused_without_the_password(tmp_path: Path) -> None:
    mangled = Path("postgresql+psycopg://me:hunter2@db.example/runs")
    with pytest.raises(StoreError, match="'//' was collapsed") as info:
        RunStore(mangled)
    assert "hunter2" not in str(info.value)
    assert not list(tmp_path.iterdir())
    with pytest.raises(StoreError, match="not a database URL"):
        RunStore("nosuchdb://host/x")


def test_the_readme_commands_run_on_a_database_url(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: `eval`, `runs` and `report` take `--db URL`; the password shows up nowhere."""
    data = tmp_path / "set.jsonl"
    write_jsonl([_sample("a"), _sample("b")], data)
    out = tmp_path / "out"
    args = ["eval", "--model", "scripted:comply", "--data", f"jsonl:{data}", "--out", str(out)]
    result = runner.invoke(app, [*args, "--db", database.target])
    assert result.exit_code == 0, result.output
    assert not (out / "safeturn.db").exists(), "the run went to --db, not to OUT"
    store = RunStore(database.target)
    (run,) = store.list_runs()
    store.close()
    assert run.status == "done"
    shown = [result.output]
    if database.kind == "postgresql":  # the password may come from libpq's PGPASSWORD instead
        password = str(make_url(database.target).password)
        monkeypatch.setenv("PGPASSWORD", password)
        target = database.target.replace(f":{password}@", "@")
    else:
        password, target = "no password", database.target
    listing = runner.invoke(app, ["runs", "--db", target])
    report = runner.invoke(app, ["report", run.id, "--db", target, "--out", str(out / "r.html")])
    assert listing.exit_code == report.exit_code == 0, listing.output + report.output
    assert run.id in listing.output and (out / "r.html").exists()
    shown += [listing.output, report.output]
    for text in [*shown, str(run.config), (out / "r.html").read_text()]:
        assert password not in text
    assert password.encode() not in database.stored_bytes()
