"""Many workers on one run: each takes samples by claiming them, so none is done twice.

`safeturn eval --resume RUN_ID --worker`, started in several processes on one machine or on
many that share one database (PostgreSQL across machines), splits a run's samples:

- A worker registers a row (token, host, pid, heartbeat) and renews it from a thread.
- It claims a few pending samples at a time with one `INSERT … SELECT` into `sample_claims`,
  whose primary key (run, sample) lets exactly one worker have a sample. On PostgreSQL the
  candidates are read `FOR UPDATE SKIP LOCKED`, so workers pass over each other's rows
  instead of colliding; SQLite runs the statement under its single writer lock.
- A worker whose heartbeat is older than `stale_after_s`, or whose process on this host is
  gone, is dead: its row goes, its claims on unfinished samples go, and the others claim those
  samples again. The calls and verdicts it stored are reused (the claimer reloads them into its
  store's indexes), so what it finished is neither lost nor asked again.
- The first worker to join a run that has no live worker starts a *round*: old claims are
  cleared and failed samples, and samples holding an `invalid` verdict, are pending again, as
  a plain `--resume` would retry them. Within a round a failed sample keeps its claim, so the
  workers do not retry it in turn forever.
- Joining happens under the run's lease (`safeturn.run.lease`), so two first workers cannot
  both start a round, and a worker cannot join a run a plain `--resume` is running (nor the
  other way round: `execute_run` refuses a run with live workers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import delete, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import Insert

from safeturn.run.lease import (
    HEARTBEAT_S,
    STALE_AFTER_S,
    Holder,
    RunBusyError,
    RunLease,
    Seat,
    process_alive,
)
from safeturn.run.store import RunStore
from safeturn.run.tables import ClaimRow, RunRow, SampleRow, VerdictRow, WorkerRow

JOIN_WAIT_S = 10.0
"""How long a joining worker waits for the run's lease (other workers hold it for a moment)."""

_LOCK = threading.Lock()
_LIVE: set[str] = set()
"""Tokens of the workers this process runs now."""


def worker_alive(holder: Holder, *, stale_after_s: float, now: float | None = None) -> bool:
    """Whether a worker may still be working: a fresh heartbeat, and a live process here."""
    return process_alive(holder, stale_after_s=stale_after_s, now=now, held_here=_worker_here)


def _worker_here(token: str) -> bool:
    with _LOCK:
        return token in _LIVE


def live_workers(store: RunStore, run_id: str, *, stale_after_s: float = STALE_AFTER_S) -> int:
    """How many live workers share the run now."""
    with store.engine.connect() as connection:
        return len(_workers(connection, run_id, stale_after_s)[0])


def ensure_no_workers(store: RunStore, run_id: str) -> None:
    """Raise `RunBusyError` when workers share the run (a plain resume would race them)."""
    count = live_workers(store, run_id)
    if count:
        raise RunBusyError(
            f"run {run_id} is being run by {count} worker(s) (--worker); join them with "
            "--worker, or wait until they finish"
        )


class RunWorker(Seat):
    """This process's seat among a run's workers, for a `with` block: join, claim, leave.

    `lost` is set when a renewal finds the seat gone (this process stalled past
    `stale_after_s` and the others took its samples): the engine then starts no new sample.
    """

    kind = "worker"
    stalled = "this worker stalled and the others took its samples over"

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        *,
        batch: int = 8,
        stale_after_s: float = STALE_AFTER_S,
        heartbeat_s: float = HEARTBEAT_S,
        join_wait_s: float = JOIN_WAIT_S,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        super().__init__(store, run_id, stale_after_s=stale_after_s, heartbeat_s=heartbeat_s)
        self.batch = batch
        self.join_wait_s = join_wait_s
        self.new_round = False
        """Whether this worker started the round (it found no live worker)."""
        self._handed_out: set[str] = set()
        """Samples already given to the engine (a worker's claims are read back whole)."""
        self._postgres = store.engine.dialect.name == "postgresql"

    # joining and leaving --------------------------------------------------------------------
    def __enter__(self) -> RunWorker:
        self.store.get_run(self.run_id)  # a clear error for an unknown run
        deadline = time.monotonic() + self.join_wait_s
        while True:
            try:
                with RunLease(self.store, self.run_id, stale_after_s=self.stale_after_s):
                    self._join()
                break
            except RunBusyError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._start_heartbeat()
        return self

    def _leave(self) -> None:
        self._stop_heartbeat()
        with _LOCK:
            _LIVE.discard(self.token)
        try:
            self.store.flush()  # its done-marks first: a claim on a pending sample is freed
        finally:  # even when the flush fails: what is still pending is free for the others
            with self.store.engine.begin() as connection:
                _purge(connection, self.run_id, [self.token])

    def _join(self) -> None:
        """Under the run's lease: drop dead workers, start a round if none is live, sit down."""
        with self.store.engine.begin() as connection:
            live, dead = _workers(connection, self.run_id, self.stale_after_s)
            _purge(connection, self.run_id, dead)
            self.new_round = not live
            if self.new_round:
                _start_round(connection, self.run_id)
            holder = self.holder()._asdict()
            connection.execute(insert(WorkerRow).values(run_id=self.run_id, **holder))
        with _LOCK:
            _LIVE.add(self.token)

    def _renewed(self) -> bool:
        with self.store.engine.begin() as connection:
            renewed = connection.execute(
                update(WorkerRow).where(WorkerRow.token == self.token).values(heartbeat=time.time())
            )
        return bool(renewed.rowcount == 1)

    # claiming -------------------------------------------------------------------------------
    def claim(self) -> list[str]:
        """Take up to `batch` pending samples nobody holds; free dead workers' ones if none."""
        claimed = self._claim()
        if not claimed:
            with self.store.engine.begin() as connection:
                _, dead = _workers(connection, self.run_id, self.stale_after_s)
                _purge(connection, self.run_id, dead)
            claimed = self._claim() if dead else []
        # What a dead worker stored for these samples must be known here before they run.
        self.store.reload_sample_keys(self.run_id, claimed)
        return claimed

    def _claim(self) -> list[str]:
        taken = select(ClaimRow.sample_id).where(ClaimRow.run_id == self.run_id)
        candidates = (
            select(literal(self.run_id), SampleRow.sample_id, literal(self.token))
            .where(
                SampleRow.run_id == self.run_id,
                SampleRow.status == "pending",
                SampleRow.sample_id.not_in(taken),
            )
            .order_by(SampleRow.position)
            .limit(self.batch)
        )
        columns = ["run_id", "sample_id", "worker"]
        statement: Insert
        if self._postgres:
            statement = (
                postgresql.insert(ClaimRow)
                .from_select(columns, candidates.with_for_update(skip_locked=True, of=SampleRow))
                .on_conflict_do_nothing()
            )
        else:
            statement = insert(ClaimRow).from_select(columns, candidates).prefix_with("OR IGNORE")
        with self.store.engine.begin() as connection:
            connection.execute(statement)
            mine = select(ClaimRow.sample_id).where(
                ClaimRow.run_id == self.run_id,
                ClaimRow.worker == self.token,
                ClaimRow.sample_id.in_(
                    select(SampleRow.sample_id).where(
                        SampleRow.run_id == self.run_id, SampleRow.status == "pending"
                    )
                ),
            )
            held = set(connection.scalars(mine))
        fresh = sorted(held - self._handed_out)
        self._handed_out.update(fresh)
        return fresh

    def unfinished(self) -> int:
        """Samples of the run still pending in the database, this worker's in flight included."""
        self.store.flush()
        query = select(func.count()).where(
            SampleRow.run_id == self.run_id, SampleRow.status == "pending"
        )
        with self.store.engine.connect() as connection:
            return int(connection.scalar(query) or 0)

    def finish(self) -> bool:
        """Mark the run done if it is still running; True for the one worker that did it."""
        self.store.flush()
        with self.store.engine.begin() as connection:
            done = connection.execute(
                update(RunRow)
                .where(RunRow.id == self.run_id, RunRow.status == "running")
                .values(status="done", finished_at=datetime.now(UTC))
            )
        return bool(done.rowcount == 1)


def _workers(
    connection: Connection, run_id: str, stale_after_s: float
) -> tuple[list[str], list[str]]:
    """(live, dead) worker tokens of a run."""
    rows = connection.execute(
        select(WorkerRow.token, WorkerRow.host, WorkerRow.pid, WorkerRow.heartbeat).where(
            WorkerRow.run_id == run_id
        )
    )
    live: list[str] = []
    dead: list[str] = []
    for row in rows:
        alive = worker_alive(Holder(*row), stale_after_s=stale_after_s)
        (live if alive else dead).append(row.token)
    return live, dead


def _purge(connection: Connection, run_id: str, tokens: Sequence[str]) -> None:
    """Remove workers; their claims on unfinished samples go, those on finished ones stay."""
    if not tokens:
        return
    pending = select(SampleRow.sample_id).where(
        SampleRow.run_id == run_id, SampleRow.status == "pending"
    )
    connection.execute(
        delete(ClaimRow).where(
            ClaimRow.run_id == run_id,
            ClaimRow.worker.in_(list(tokens)),
            ClaimRow.sample_id.in_(pending),
        )
    )
    connection.execute(delete(WorkerRow).where(WorkerRow.token.in_(list(tokens))))


def _start_round(connection: Connection, run_id: str) -> None:
    """Clear the claims; failed samples and samples with `invalid` verdicts are pending again.

    The run is running again too, so that the worker that ends this round is the one that
    marks it done and writes its report.
    """
    connection.execute(delete(ClaimRow).where(ClaimRow.run_id == run_id))
    connection.execute(
        update(RunRow).where(RunRow.id == run_id).values(status="running", finished_at=None)
    )
    invalid = select(VerdictRow.sample_id).where(
        VerdictRow.run_id == run_id, VerdictRow.label == "invalid"
    )
    connection.execute(
        update(SampleRow)
        .where(
            SampleRow.run_id == run_id,
            (SampleRow.status == "error") | SampleRow.sample_id.in_(invalid),
        )
        .values(status="pending", error=None)
    )
