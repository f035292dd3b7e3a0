"""The run store's write-behind: group commits, read-your-writes, ordering, failures, sync mode."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from safeturn.errors import StoreError
from safeturn.judges import load_judge
from safeturn.models.scripted import BUILTIN_SCRIPTS, ScriptedModel
from safeturn.run.engine import EvalSettings, execute_run, start_run
from safeturn.run.store import RunStore, request_hash
from safeturn.schema import Dialogue, GenerateParams, ImagePart, Message, Reply, Sample, Verdict
from tests.conftest import REPO_ROOT
from tests.databases import Database, failing_inserts_sql

_INCOMPLETE = (
    "(SELECT count(*) FROM model_calls c WHERE c.run_id = NEW.run_id"
    " AND c.sample_id = NEW.sample_id) < 2"
    " OR (SELECT count(*) FROM verdicts v WHERE v.run_id = NEW.run_id"
    " AND v.sample_id = NEW.sample_id) < 2"
)
_COMPLETE_TRIGGER = {
    "sqlite": [
        "CREATE TRIGGER complete BEFORE UPDATE OF status ON samples WHEN NEW.status = 'done'"
        f" AND ({_INCOMPLETE}) BEGIN SELECT RAISE(ABORT, 'done before its calls'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION complete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF {_INCOMPLETE} THEN RAISE EXCEPTION 'done before its calls'; END IF;"
        " RETURN NEW; END $$",
        "CREATE TRIGGER complete BEFORE UPDATE OF status ON samples FOR EACH ROW"
        " WHEN (NEW.status = 'done') EXECUTE FUNCTION complete()",
    ],
}
"""A trigger that refuses a done-mark of a sample whose two calls and verdicts are missing."""

LONG_WINDOW_S = 3600.0
"""A window the test never reaches: nothing is committed unless something asks for it."""


def _samples(n: int, turns: int = 2) -> list[Sample]:
    return [
        Sample(
            id=f"s{i}",
            source="unit",
            harmful=True,
            dialogue=Dialogue(messages=[Message.user(f"q{t} of {i}") for t in range(1, turns + 1)]),
        )
        for i in range(n)
    ]


def _reply(text: str = "Sure.") -> Reply:
    return Reply(text=text, model="m", prompt_tokens=3, completion_tokens=1, latency_s=0.01)


def _verdict(sample_id: str, turn: int, label: str = "unsafe") -> Verdict:
    return Verdict(sample_id=sample_id, turn=turn, judge="refusal", label=label)  # type: ignore[arg-type]


def _fail_inserts_of(database: Database, sample_id: str) -> None:
    for statement in failing_inserts_sql(database.kind, sample_id):
        database.execute(statement)


def test_group_commit_persists_everything_after_close(database: Database) -> None:
    db = database.target
    store = RunStore(db)
    run_id = start_run(store, _samples(30), EvalSettings(model="m"))
    for i in range(30):
        for turn in (1, 2):
            key = f"k{i}-{turn}"
            store.record_call(
                run_id, sample_id=f"s{i}", turn=turn, role="target", key=key, reply=_reply()
            )
            store.record_verdict(run_id, _verdict(f"s{i}", turn))
        store.mark_sample(run_id, f"s{i}", "done")
    store.close()

    reopened = RunStore(db)
    calls = reopened.calls(run_id)
    assert [c.request_hash for c in calls] == [f"k{i}-{t}" for i in range(30) for t in (1, 2)]
    assert len(reopened.verdicts(run_id)) == 60
    assert {state for state, _ in reopened.sample_status(run_id).values()} == {"done"}
    reopened.close()


def test_reads_see_writes_before_they_are_committed(database: Database) -> None:
    db = database.target
    store = RunStore(db, window_s=LONG_WINDOW_S)
    run_id = start_run(store, _samples(1), EvalSettings(model="m"))
    store.record_call(run_id, sample_id="s0", turn=1, role="target", key="k", reply=_reply("hi"))
    store.record_verdict(run_id, _verdict("s0", 1, "safe"))
    store.mark_sample(run_id, "s0", "done")
    assert database.execute("SELECT count(*) FROM model_calls") == [(0,)], "still queued"

    cached = store.cached_reply(run_id, "k")
    assert cached is not None and cached.text == "hi" and cached.prompt_tokens == 3
    verdict = store.get_verdict(run_id, "s0", 1, "refusal")
    assert verdict is not None and verdict.label == "safe"
    assert store.sample_status(run_id) == {"s0": ("done", None)}  # a DB read commits first
    assert database.execute("SELECT count(*) FROM model_calls") == [(1,)]
    assert store.cached_reply(run_id, "k") == cached  # now read back from the database
    store.close()


async def test_done_marks_never_land_before_their_calls(database: Database) -> None:
    db = database.target
    store = RunStore(db)
    run_id = start_run(store, _samples(24), EvalSettings(model="m", concurrency=6))
    for statement in _COMPLETE_TRIGGER[database.kind]:  # the database checks every done-mark
        database.execute(statement)
    model = ScriptedModel(BUILTIN_SCRIPTS["comply"], name="m")
    await execute_run(store, run_id, model, [load_judge("refusal")])
    assert {state for state, _ in store.sample_status(run_id).values()} == {"done"}
    store.close()


def test_a_killed_worker_leaves_no_done_sample_without_its_calls(database: Database) -> None:
    db = database.target
    store = RunStore(db)
    run_id = start_run(store, _samples(16), EvalSettings(model="scripted:comply", concurrency=4))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.run._resume_worker", str(db), run_id], cwd=REPO_ROOT, env=env
    )
    deadline = time.monotonic() + 60
    while not any(s == "done" for s, _ in store.sample_status(run_id).values()):
        assert worker.poll() is None, "worker ended before it could be killed"
        assert time.monotonic() < deadline, "worker made no progress"
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)

    done = {sid for sid, (state, _) in store.sample_status(run_id).items() if state == "done"}
    assert 0 < len(done) < 16, "the kill should land mid-run"
    turns = {(c.sample_id, c.turn) for c in store.calls(run_id)}
    judged = {(v.sample_id, v.turn) for v in store.verdicts(run_id)}
    for sid in done:
        assert {(sid, 1), (sid, 2)} <= turns & judged, f"{sid} is done without its calls"
    store.close()


def test_a_failed_group_commit_surfaces_and_stops_later_writes(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    db = database.target
    store = RunStore(db, window_s=1.0)  # the call and its mark go out in one group
    run_id = start_run(store, _samples(3), EvalSettings(model="m"))
    _fail_inserts_of(database, "s1")
    store.record_call(run_id, sample_id="s0", turn=1, role="target", key="a", reply=_reply())
    store.flush()
    with caplog.at_level(logging.ERROR, logger="safeturn.run.store"):
        store.record_call(run_id, sample_id="s1", turn=2, role="target", key="b", reply=_reply())
        store.mark_sample(run_id, "s1", "done")
        writer = store._writer
        if writer is not None:  # the background writer meets the failure and stops
            writer.join(timeout=30)
    expected = r"could not write call \(run \w+, sample 's1' turn 2 target, hash b\): disk says no"
    with pytest.raises(StoreError, match=expected):
        store.record_call(run_id, sample_id="s2", turn=1, role="target", key="c", reply=_reply())
    with pytest.raises(StoreError, match=expected):
        store.flush()
    with pytest.raises(StoreError, match=expected):
        store.close()
    assert any("sample 's1' turn 2" in r.getMessage() for r in caplog.records)

    reopened = RunStore(db)
    assert [c.request_hash for c in reopened.calls(run_id)] == ["a"]
    assert reopened.sample_status(run_id)["s1"] == ("pending", None), "no mark without its call"
    reopened.close()


def test_sync_mode_commits_each_write_before_it_returns(database: Database) -> None:
    db = database.target
    store = RunStore(db, durability="sync")
    run_id = start_run(store, _samples(2), EvalSettings(model="m"))
    store.record_call(run_id, sample_id="s0", turn=1, role="target", key="a", reply=_reply())
    assert database.execute("SELECT request_hash FROM model_calls") == [("a",)]
    store.record_verdict(run_id, _verdict("s0", 1))
    store.mark_sample(run_id, "s0", "done")
    assert database.execute("SELECT status FROM samples WHERE sample_id = 's0'") == [("done",)]
    assert database.execute("SELECT count(*) FROM verdicts") == [(1,)]

    _fail_inserts_of(database, "s1")  # a failed write raises at once and spoils nothing else
    with pytest.raises(StoreError, match=r"sample 's1' turn 1 target, hash b"):
        store.record_call(run_id, sample_id="s1", turn=1, role="target", key="b", reply=_reply())
    assert store.cached_reply(run_id, "b") is None
    store.mark_sample(run_id, "s1", "error", "disk says no")
    assert store.sample_status(run_id)["s1"] == ("error", "disk says no")
    store.close()


def test_repeated_verdicts_replace_within_and_across_groups(database: Database) -> None:
    store = RunStore(database.target, window_s=LONG_WINDOW_S)
    run_id = start_run(store, _samples(1), EvalSettings(model="m"))
    store.record_verdict(run_id, _verdict("s0", 1, "unsafe"))
    store.record_verdict(run_id, _verdict("s0", 1, "invalid"))
    assert [v.label for v in store.verdicts(run_id)] == ["invalid"]
    store.record_verdict(run_id, _verdict("s0", 1, "safe"))
    assert store.get_verdict(run_id, "s0", 1, "refusal") == _verdict("s0", 1, "safe")
    assert [v.label for v in store.verdicts(run_id)] == ["safe"]
    store.close()


def test_a_call_another_worker_stored_first_is_skipped_not_fatal(database: Database) -> None:
    db = database.target
    first, second = RunStore(db), RunStore(db)
    run_id = start_run(first, _samples(2), EvalSettings(model="m"))
    assert second.cached_reply(run_id, "shared") is None  # second loads its index now
    first.record_call(run_id, sample_id="s0", turn=1, role="target", key="shared", reply=_reply())
    first.close()
    second.record_call(run_id, sample_id="s0", turn=1, role="target", key="shared", reply=_reply())
    second.record_call(run_id, sample_id="s1", turn=1, role="target", key="own", reply=_reply())
    second.mark_sample(run_id, "s1", "done")
    assert [c.request_hash for c in second.calls(run_id)] == ["shared", "own"]
    assert second.sample_status(run_id)["s1"] == ("done", None)
    second.close()


def test_a_store_never_closed_is_flushed_at_exit(database: Database) -> None:
    db = database.target
    script = textwrap.dedent(
        f"""
        from safeturn.run.store import RunStore
        from safeturn.schema import Reply
        store = RunStore({str(db)!r}, window_s={LONG_WINDOW_S})
        run_id = store.create_run({{}})
        reply = Reply(text="x", model="m")
        store.record_call(run_id, sample_id="s", turn=1, role="target", key="k", reply=reply)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO_ROOT)
    assert database.execute("SELECT request_hash FROM model_calls") == [("k",)]


def test_unknown_sample_is_refused_at_once(database: Database) -> None:
    store = RunStore(database.target)
    run_id = start_run(store, _samples(1), EvalSettings(model="m"))
    with pytest.raises(StoreError, match="has no sample 'nope'"):
        store.mark_sample(run_id, "nope", "done")
    store.close()


def test_request_hash_is_byte_identical_to_stored_runs() -> None:
    """Keys of runs stored before the hand-written encoding must still match (resume)."""
    dialogue = Dialogue(
        messages=[
            Message.system("be brief"),
            Message.user(
                'Wie geht\'s? "quoted" ✓',
                images=[
                    ImagePart(data=b"not really a png"),
                    ImagePart(url="https://example.org/cat.png"),
                ],
            ),
            Message.assistant("Fine.\n"),
            Message.user("and now?"),
        ]
    )
    params = GenerateParams(max_tokens=32, temperature=0.5, seed=7, stop=("END",))
    key = request_hash("target:openai:http://h/v1#m", dialogue, params, scope="s1|2|0")
    assert key == "6351654b0c7ff0488d19669bf0657b9fb81098de01868101e8c055bcc11acb37"
    empty = request_hash("m", Dialogue(), GenerateParams())
    assert empty == "a4c1fde9cb7c819d8a1de9b5020ed7e76644eb1aa7027c22fe2b54397b2f9b62"


def test_an_unexpected_commit_error_still_stops_later_marks(database: Database) -> None:
    """A raw database error (not a StoreError) must not let a done-mark outlive its calls."""
    store = RunStore(database.target, window_s=10)
    run_id = store.create_run({"x": 1})
    store.add_samples(run_id, _samples(1))
    real_commit = store._commit

    def hiccup(group: object) -> None:
        raise RuntimeError("connection dropped")

    store._commit = hiccup  # type: ignore[method-assign]
    store.record_call(run_id, sample_id="s0", turn=1, role="target", key="k1", reply=_reply())
    with pytest.raises(StoreError, match="connection dropped"):
        store.flush()
    store._commit = real_commit  # type: ignore[method-assign]
    with pytest.raises(StoreError, match="connection dropped"):
        store.mark_sample(run_id, "s0", "done")
    with pytest.raises(StoreError):
        store.flush()
    assert database.execute("SELECT status FROM samples") == [("pending",)]
