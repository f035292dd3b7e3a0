"""Faults around resuming a run (issue 14, items 14 and 16): two resumes at once, runs without
samples, samples that cannot be answered."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from safeturn.errors import StoreError
from safeturn.judges import load_judge
from safeturn.models.scripted import BUILTIN_SCRIPTS, ScriptedModel
from safeturn.run.engine import EvalSettings, execute_run, start_run, unloadable_sample
from safeturn.run.lease import Holder, RunBusyError, RunLease, holder_alive
from safeturn.run.results import load_results
from safeturn.run.store import RunStore
from safeturn.schema import Dialogue, Message, Sample, Verdict
from tests.conftest import REPO_ROOT
from tests.databases import Database


def _samples(n: int) -> list[Sample]:
    return [
        Sample(
            id=f"s{i}",
            source="unit",
            harmful=i % 2 == 0,
            dialogue=Dialogue(messages=[Message.user(f"hi {i}"), Message.user(f"now {i}")]),
        )
        for i in range(n)
    ]


def _comply() -> ScriptedModel:
    return ScriptedModel(BUILTIN_SCRIPTS["comply"], name="scripted:comply")


def _outcome(store: RunStore, run_id: str) -> dict[tuple[str, int], tuple[str, str]]:
    """(sample, turn) → (reply text, verdict label): what a run produced, id-independent."""
    replies = {(c.sample_id, c.turn): c.reply["text"] for c in store.calls(run_id)}
    return {
        (v.sample_id, v.turn): (replies[v.sample_id, v.turn], v.label)
        for v in store.verdicts(run_id)
    }


@pytest.mark.slow  # two Python processes start: about 4 s
def test_two_processes_resuming_one_run_neither_crash_nor_duplicate(database: Database) -> None:
    db = database.target
    store = RunStore(db)
    run_id = start_run(store, _samples(12), EvalSettings(model="scripted:comply", concurrency=2))
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    command = [sys.executable, "-m", "tests.run._concurrent_worker", str(db), run_id, "0.25"]
    workers = [
        subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    ended = [(w.pid, *w.communicate(timeout=120), w.returncode) for w in workers]
    for _pid, _out, err, _code in ended:
        assert "Traceback" not in err, err
    codes = sorted(code for *_, code in ended)
    assert codes == [0, 1], ended  # the run takes ~3 s: the second finds the first at work
    [(winner, *_)] = [e for e in ended if e[3] == 0]
    [(_, _, refusal, _)] = [e for e in ended if e[3] == 1]
    assert f"run {run_id} is being resumed by another process (pid {winner}" in refusal

    calls = store.calls(run_id)
    assert len(calls) == 24 == len({(c.sample_id, c.turn) for c in calls}), "no call twice"
    assert len(store.verdicts(run_id)) == 24
    assert {state for state, _ in store.sample_status(run_id).values()} == {"done"}
    assert store.get_run(run_id).status == "done"

    alone = RunStore(database.new())
    single = start_run(alone, _samples(12), EvalSettings(model="scripted:comply", concurrency=2))
    asyncio.run(execute_run(alone, single, _comply(), [load_judge("refusal")]))
    assert _outcome(store, run_id) == _outcome(alone, single)
    ours, theirs = load_results(store, run_id), load_results(alone, single)
    assert ours.attack_success() == theirs.attack_success()


def test_a_run_held_by_a_live_process_is_refused_before_any_call(database: Database) -> None:
    store = RunStore(database.target)
    run_id = start_run(store, _samples(2), EvalSettings(model="scripted:comply"))
    parent = os.getppid()  # a live process that is not this one
    store.claim_lease(run_id, Holder("other", _host(), parent, time.time()), busy=lambda _: False)
    model = _comply()
    with pytest.raises(RunBusyError, match=rf"being resumed by another process \(pid {parent}"):
        asyncio.run(execute_run(store, run_id, model, [load_judge("refusal")]))
    assert model.calls == 0 and store.get_run(run_id).status == "running"


def test_a_dead_or_silent_holder_does_not_block_a_resume(database: Database) -> None:
    store = RunStore(database.target)
    run_id = start_run(store, _samples(2), EvalSettings(model="scripted:comply"))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    now = time.time()
    assert not holder_alive(Holder("t", _host(), gone.pid, now), stale_after_s=60)
    assert holder_alive(Holder("t", "elsewhere", gone.pid, now), stale_after_s=60)
    assert not holder_alive(Holder("t", "elsewhere", 1, now - 61), stale_after_s=60)
    store.claim_lease(run_id, Holder("dead", _host(), gone.pid, now), busy=lambda _: False)
    asyncio.run(execute_run(store, run_id, _comply(), [load_judge("refusal")]))
    assert store.get_run(run_id).status == "done" and len(store.calls(run_id)) == 4
    with RunLease(store, run_id), RunLease(store, run_id):  # re-entrant, then released
        pass
    other = RunStore(database.target)
    with RunLease(other, run_id):
        pass


def test_a_verdict_another_process_stored_first_is_replaced_not_fatal(database: Database) -> None:
    first, second = RunStore(database.target), RunStore(database.target)
    run_id = start_run(first, _samples(1), EvalSettings(model="scripted:comply"))
    second.get_verdict(run_id, "s0", 1, "refusal")  # loads its index while the table is empty
    first.record_verdict(run_id, Verdict(sample_id="s0", turn=1, judge="refusal", label="safe"))
    first.flush()
    second.record_verdict(run_id, Verdict(sample_id="s0", turn=1, judge="refusal", label="unsafe"))
    second.flush()  # used to raise: UNIQUE constraint failed on verdicts
    assert [v.label for v in first.verdicts(run_id)] == ["unsafe"]


def test_a_run_without_samples_is_never_marked_done(database: Database) -> None:
    store = RunStore(database.target)
    settings = EvalSettings(model="scripted:comply")
    bare = store.create_run(settings.model_dump(mode="json"))  # as a crash before the samples
    with pytest.raises(StoreError, match=f"run {bare} holds no samples"):
        asyncio.run(execute_run(store, bare, _comply(), [load_judge("refusal")]))
    assert store.get_run(bare).status == "failed"
    with pytest.raises(StoreError, match="no samples to run"):
        start_run(store, [], settings)
    unstorable = _samples(2)
    unstorable[1].metadata["blob"] = b"\xff"  # cannot be written as JSON
    with pytest.raises(Exception, match="utf-8"):
        start_run(store, unstorable, settings)
    assert [run.id for run in store.list_runs()] == [bare], "no run without its samples"


def test_samples_without_a_user_turn_or_unreadable_are_errors_not_done(database: Database) -> None:
    store = RunStore(database.target)
    only_system = Sample(
        id="sys", source="unit", dialogue=Dialogue(messages=[Message(role="system", parts=[])])
    )
    unreadable = unloadable_sample("set.jsonl:line-7", "jsonl", "set.jsonl:7: invalid JSON (x)")
    samples = [*_samples(1), only_system, unreadable]
    for mode in ("live", "replay"):
        settings = EvalSettings(model="scripted:comply", mode=mode)
        run_id = start_run(store, samples, settings)
        asyncio.run(execute_run(store, run_id, _comply(), [load_judge("refusal")]))
        status = store.sample_status(run_id)
        assert status["s0"] == ("done", None)
        assert status["sys"][0] == "error" and "'sys' has no user turn" in (status["sys"][1] or "")
        assert status["set.jsonl:line-7"] == ("error", "SchemaError: set.jsonl:7: invalid JSON (x)")
        assert len(load_results(store, run_id).errors()) == 2


def test_a_store_failure_mid_run_surfaces_as_itself_not_an_exception_group(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RunStore(database.target)
    run_id = start_run(store, _samples(3), EvalSettings(model="scripted:comply", concurrency=2))

    def disk_full(*_args: object, **_kwargs: object) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(store, "mark_sample", disk_full)
    with pytest.raises(StoreError, match="disk full"):  # a SafeturnError the CLI prints
        asyncio.run(execute_run(store, run_id, _comply(), [load_judge("refusal")]))
    assert store.get_run(run_id).status == "running"  # resumable, not done


def _host() -> str:
    import socket

    return socket.gethostname()
