"""Several workers on one run: claims never overlap, a dead worker's samples are taken over."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safeturn.judges import load_judge
from safeturn.models.scripted import BUILTIN_SCRIPTS, ScriptedModel
from safeturn.run.claims import RunWorker, live_workers
from safeturn.run.engine import EvalSettings, execute_run, execute_worker, start_run
from safeturn.run.lease import Holder, RunBusyError
from safeturn.run.store import RunStore
from safeturn.schema import Dialogue, Message, Sample, Verdict
from tests.conftest import REPO_ROOT
from tests.databases import Database


def _samples(n: int, turns: int) -> list[Sample]:
    return [
        Sample(
            id=f"s{i}",
            source="unit",
            harmful=True,
            dialogue=Dialogue(
                messages=[Message.user(f"turn {t} of s{i}") for t in range(1, turns + 1)]
            ),
        )
        for i in range(n)
    ]


@pytest.fixture
def db_url(database: Database) -> str:
    """Each test runs on SQLite and on a real PostgreSQL server."""
    return database.target


@pytest.fixture
def store(db_url: str) -> collections.abc.Iterator[RunStore]:
    opened = RunStore(db_url)
    yield opened
    opened.close()


def _run(store: RunStore, n: int = 12, turns: int = 2, concurrency: int = 4) -> str:
    settings = EvalSettings(model="scripted:comply", concurrency=concurrency)
    return start_run(store, _samples(n, turns), settings)


def test_two_workers_claim_disjoint_batches_that_cover_the_run(store: RunStore) -> None:
    run_id = _run(store, n=10)
    with RunWorker(store, run_id, batch=3) as first, RunWorker(store, run_id, batch=3) as second:
        assert first.new_round and not second.new_round
        assert live_workers(store, run_id) == 2
        taken: list[str] = []
        while batch := first.claim() + second.claim():
            taken += batch
        assert sorted(taken) == sorted(f"s{i}" for i in range(10)), "each sample exactly once"
        assert first.claim() == second.claim() == []
    assert live_workers(store, run_id) == 0


def test_a_dead_workers_unfinished_samples_are_taken_over(store: RunStore) -> None:
    run_id = _run(store, n=6)
    with RunWorker(store, run_id, batch=4, heartbeat_s=60) as hung:
        held = hung.claim()
        store.mark_sample(run_id, held[0], "done")  # it finished one before it hung
        with RunWorker(store, run_id, batch=10, stale_after_s=0.3) as heir:
            assert sorted(heir.claim()) == sorted({f"s{i}" for i in range(6)} - set(held))
            assert heir.claim() == [], "a live worker's samples are left to it"
            time.sleep(0.4)  # no heartbeat from it for longer than the heir tolerates
            assert heir.renew()
            assert sorted(heir.claim()) == sorted(held[1:]), "its unfinished ones, not its done"
            assert not hung.renew(), "when it wakes up, its seat is gone"
            assert hung.lost.is_set()


def test_a_failed_sample_waits_for_the_next_round(store: RunStore) -> None:
    run_id = _run(store, n=3)
    store.record_verdict(run_id, Verdict(sample_id="s2", turn=2, judge="refusal", label="invalid"))
    with RunWorker(store, run_id, batch=10) as worker:
        assert sorted(worker.claim()) == ["s0", "s1", "s2"]
        store.mark_sample(run_id, "s0", "error", "endpoint down")
        store.mark_sample(run_id, "s1", "done")
        store.mark_sample(run_id, "s2", "done")
        assert worker.claim() == [], "no retry within the round"
        assert worker.unfinished() == 0
        assert worker.finish() and not worker.finish(), "the run is marked done once"
    with RunWorker(store, run_id, batch=10) as next_round:
        assert next_round.new_round
        assert store.get_run(run_id).status == "running", "its ender will write the report"
        assert sorted(next_round.claim()) == ["s0", "s2"], "the failed one and the invalid one"


def test_a_plain_resume_and_workers_exclude_each_other(store: RunStore) -> None:
    run_id = _run(store, n=2)
    model = ScriptedModel(BUILTIN_SCRIPTS["comply"], name="scripted:comply")
    with RunWorker(store, run_id), pytest.raises(RunBusyError, match="worker"):
        asyncio.run(execute_run(store, run_id, model, [load_judge("refusal")]))
    assert model.calls == 0


def test_a_worker_does_not_join_a_run_a_plain_resume_holds(store: RunStore) -> None:
    run_id = _run(store, n=2)
    elsewhere = Holder("t" * 32, "another-host", 1, time.time())
    store.claim_lease(run_id, elsewhere, busy=lambda _: True)
    with (
        pytest.raises(RunBusyError, match="another-host"),
        RunWorker(store, run_id, join_wait_s=0.2),
    ):
        pass
    assert live_workers(store, run_id) == 0


async def test_workers_in_one_process_answer_every_turn_once(db_url: str) -> None:
    stores = [RunStore(db_url) for _ in range(3)]
    run_id = _run(stores[0], n=20, turns=3, concurrency=3)
    models = [
        ScriptedModel(BUILTIN_SCRIPTS["comply"], name="scripted:comply", delay_s=0.005)
        for _ in stores
    ]
    judge = load_judge("refusal")
    try:
        finished = await asyncio.gather(
            *(
                execute_worker(s, run_id, m, [judge], batch=2, poll_s=0.01)
                for s, m in zip(stores, models, strict=True)
            )
        )
        assert sum(finished) == 1, "exactly one worker finishes the run"
        assert sum(m.calls for m in models) == 60, "every turn answered once, none twice"
        assert all(m.calls > 0 for m in models), "the work was shared"
        calls = stores[0].calls(run_id)
        assert len({(c.sample_id, c.turn) for c in calls}) == len(calls) == 60
        assert len(stores[0].verdicts(run_id)) == 60
        assert stores[0].get_run(run_id).status == "done"
    finally:
        for s in stores:
            s.close()


@pytest.mark.slow
def test_four_worker_processes_and_a_kill_lose_and_repeat_nothing(
    db_url: str, tmp_path: Path
) -> None:
    store = RunStore(db_url)
    run_id = _run(store, n=48, turns=4, concurrency=4)
    log = tmp_path / "calls.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "tests.run._claim_worker", db_url, run_id, "0.05", str(log)]
    workers = [
        subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    victim = workers[0]
    deadline = time.monotonic() + 120
    while _calls_by(log).get(victim.pid, 0) < 8:  # it is working: kill it mid-run
        assert victim.poll() is None, "the worker ended before it could be killed"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    outputs = [w.communicate(timeout=120)[0] for w in workers[1:]]
    assert all(w.returncode == 0 for w in workers[1:]), outputs
    assert sum("finished=True" in out for out in outputs) == 1

    calls = store.calls(run_id)
    keys = [(c.sample_id, c.turn) for c in calls]
    assert len(keys) == len(set(keys)) == 48 * 4, "every turn stored once"
    verdicts = store.verdicts(run_id)
    assert len({(v.sample_id, v.turn) for v in verdicts}) == len(verdicts) == 48 * 4
    assert all(state == "done" for state, _ in store.sample_status(run_id).values())
    assert store.get_run(run_id).status == "done"

    # At the model: a turn is asked twice only when the victim asked it and its reply was
    # never stored (in flight, or in the last commit window), at most its 4 samples' worth.
    asked = _asked(log)
    repeats = {text: pids for text, pids in asked.items() if len(pids) > 1}
    assert all(victim.pid in pids and len(pids) == 2 for pids in repeats.values()), repeats
    assert len({text.split(" of ")[1] for text in repeats}) <= 4
    survivors = {w.pid for w in workers[1:]}
    assert survivors & {pid for pids in asked.values() for pid in pids} == survivors
    assert live_workers(store, run_id) == 0
    store.close()


def _calls_by(log: Path) -> dict[int, int]:
    if not log.exists():
        return {}
    return collections.Counter(int(line.split("\t")[0]) for line in log.read_text().splitlines())


def _asked(log: Path) -> dict[str, list[int]]:
    asked: dict[str, list[int]] = collections.defaultdict(list)
    for line in log.read_text().splitlines():
        pid, text = line.split("\t")
        asked[text].append(int(pid))
    return asked
