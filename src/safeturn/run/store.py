"""The run database: every call and verdict is stored as it returns, in group commits.

Writes are queued and committed in groups by a writer thread (`run/writer.py`); reads see
every write at once, queued or committed. `--resume` redoes just the calls a `kill -9` lost,
as `cached_reply` finds every call already stored (keyed by `request_hash`, `run/hashing.py`).
A sample's done-mark is committed with or after its calls and verdicts, never before, so a
sample marked done is complete.

SQLite by default, or PostgreSQL (`run/database.py`; the tests run on both). Opening a store
migrates the database to the schema this code knows (`run/migrate.py`; the tables are in
`run/tables.py`). One process at a time runs a run: it holds the run's lease (`run.lease`),
and a second resume stops with a clear error. Writes are idempotent all the same: a call or a
verdict that another process stored first is skipped or replaced, never a crash.
API keys never reach this module: `create_run` drops config keys that look like secrets.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from sqlalchemy import Text, delete, insert, select, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from safeturn.errors import StoreError
from safeturn.redact import redact_url_credentials, scrub_secrets
from safeturn.run.database import database_engine, database_url
from safeturn.run.hashing import REQUEST_HASH_VERSION, request_hash
from safeturn.run.lease import Holder, RunBusyError
from safeturn.run.migrate import SCHEMA_REVISION, migrate
from safeturn.run.tables import (
    Base,
    CallRow,
    ClaimRow,
    DecisionRow,
    LeaseRow,
    RunRow,
    SampleRow,
    VerdictRow,
    WorkerRow,
    now,
)
from safeturn.run.writer import DEFAULT_WINDOW_S, Durability, WriteBehind
from safeturn.run.writes import VERDICT_FIELDS, Write, sample_rows
from safeturn.schema import Reply, Sample, Verdict

__all__ = [
    "DEFAULT_WINDOW_S",
    "REQUEST_HASH_VERSION",
    "SCHEMA_REVISION",
    "Base",
    "CallRole",
    "CallRow",
    "ClaimRow",
    "DecisionRow",
    "Durability",
    "LeaseRow",
    "RunRow",
    "RunStatus",
    "RunStore",
    "SampleRow",
    "SampleStatus",
    "VerdictRow",
    "WorkerRow",
    "request_hash",
]

CallRole = Literal["target", "judge", "attacker", "expert"]
SampleStatus = Literal["pending", "done", "error"]
RunStatus = Literal["running", "done", "failed"]


class RunStore(WriteBehind):
    """Thread-safe access to the run database, with write-behind group commits.

    Args:
        target: A SQLAlchemy URL or a file path (SQLite).
        durability: `"group"` queues writes and commits them in groups from a writer thread;
            `"sync"` commits each write before it returns (a `kill -9` loses nothing that
            returned, at one commit per call).
        window_s: In group mode, how long the writer gathers writes before it commits: the
            most a `kill -9` loses, besides the commit under way.
        max_pending: In group mode, a write that finds this many queued commits them itself,
            which bounds memory when the database cannot keep up.

    A failed group commit is kept: every later write, `flush` and `close` raises it as a
    `StoreError` naming the write that failed, and nothing queued after it is committed (so
    no done-mark can outlive its calls). Resume the run from a new store. A database written
    by a newer safeturn (a schema revision this code does not know) is refused.
    """

    def __init__(
        self,
        target: str | Path,
        *,
        durability: Durability = "group",
        window_s: float = DEFAULT_WINDOW_S,
        max_pending: int = 10_000,
    ) -> None:
        url = database_url(target)
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        shown_url = redact_url_credentials(url)  # for messages: no database password
        engine = database_engine(url)
        super().__init__(
            engine, shown_url, durability=durability, window_s=window_s, max_pending=max_pending
        )
        try:
            migrate(engine, shown_url)
        except BaseException:
            engine.dispose()
            raise
        # Per-run indexes of what is stored or queued, loaded once: a fresh call or verdict
        # then costs no lookup query.
        self._call_keys: dict[str, set[str]] = {}
        self._verdict_keys: dict[str, set[tuple[str, int, str]]] = {}
        self._sample_ids: dict[str, set[str]] = {}

    # runs -----------------------------------------------------------------------------------
    def create_run(
        self, config: dict[str, Any], *, kind: str = "eval", samples: Sequence[Sample] = ()
    ) -> str:
        """Create a run, with its samples in the same transaction, and return its id.

        A run never exists without the samples it was started with: if they cannot be stored,
        neither is the run.
        """
        run_id = uuid.uuid4().hex[:12]
        rows = sample_rows(run_id, samples)
        with self._session() as session:
            session.add(RunRow(id=run_id, kind=kind, config=scrub_secrets(config)))
            session.flush()  # the run row before its samples (foreign keys)
            if rows:
                session.execute(insert(SampleRow), rows)
        return run_id

    def get_run(self, run_id: str) -> RunRow:
        """The run row, or `StoreError` naming the database."""
        self._drain()
        with Session(self._engine, expire_on_commit=False) as session:
            row = session.get(RunRow, run_id)
        if row is None:
            raise StoreError(f"no run {run_id!r} in {self._shown_url}")
        return row

    def list_runs(self) -> list[RunRow]:
        """All runs, newest first."""
        self._drain()
        with Session(self._engine, expire_on_commit=False) as session:
            return list(session.scalars(select(RunRow).order_by(RunRow.created_at.desc())))

    def finish_run(self, run_id: str, status: RunStatus) -> None:
        """Mark a run done or failed, after everything queued before it is committed."""
        with self._session() as session:
            row = session.get(RunRow, run_id)
            if row is None:
                raise StoreError(f"no run {run_id!r} in {self._shown_url}")
            row.status = status
            row.finished_at = now()

    # leases ---------------------------------------------------------------------------------
    def claim_lease(self, run_id: str, holder: Holder, *, busy: Callable[[Holder], bool]) -> None:
        """Take the run's lease for `holder`, or raise `RunBusyError` if `busy(current holder)`.

        A free or stale lease is taken by compare-and-swap on the old holder's token, so of two
        processes claiming at once exactly one wins.
        """
        self.get_run(run_id)
        for _ in range(5):
            with self._engine.begin() as connection:
                current = connection.execute(
                    select(LeaseRow.token, LeaseRow.host, LeaseRow.pid, LeaseRow.heartbeat).where(
                        LeaseRow.run_id == run_id
                    )
                ).first()
            if current is not None and busy(Holder(*current)):
                raise RunBusyError(
                    f"run {run_id} is being resumed by another process (pid {current.pid} on "
                    f"{current.host}); wait for it to finish, or stop it first"
                )
            values = {**holder._asdict(), "run_id": run_id}
            try:
                with self._engine.begin() as connection:
                    if current is None:
                        connection.execute(insert(LeaseRow).values(values))
                        return
                    taken = connection.execute(
                        update(LeaseRow)
                        .where(LeaseRow.run_id == run_id, LeaseRow.token == current.token)
                        .values(values)
                    )
                    if taken.rowcount == 1:
                        return
            except IntegrityError:
                pass  # another process inserted first: look again
        raise RunBusyError(f"run {run_id}: could not take its lease; another process keeps it")

    def renew_lease(self, run_id: str, token: str) -> bool:
        """Refresh the heartbeat of a lease; False when `token` no longer holds it."""
        with self._engine.begin() as connection:
            renewed = connection.execute(
                update(LeaseRow)
                .where(LeaseRow.run_id == run_id, LeaseRow.token == token)
                .values(heartbeat=time.time())
            )
        return bool(renewed.rowcount == 1)

    def release_lease(self, run_id: str, token: str) -> None:
        """Give the lease back (a no-op when `token` no longer holds it)."""
        with self._engine.begin() as connection:
            connection.execute(
                delete(LeaseRow).where(LeaseRow.run_id == run_id, LeaseRow.token == token)
            )

    # samples --------------------------------------------------------------------------------
    def add_samples(self, run_id: str, samples: Sequence[Sample]) -> None:
        """Store the run's samples (once; a resumed run keeps the stored copies)."""
        rows = sample_rows(run_id, samples)
        with self._session() as session:
            if rows:
                session.execute(insert(SampleRow), rows)  # one executemany, not N ORM objects
        if run_id in self._sample_ids:
            self._sample_ids[run_id].update(s.id for s in samples)

    def load_samples(self, run_id: str) -> list[Sample]:
        """The run's samples in their original order."""
        self._drain()
        # Each payload's JSON text straight into pydantic, in batches: no ORM rows, no dicts.
        query = select(sql_cast(SampleRow.payload, Text)).where(SampleRow.run_id == run_id)
        with self._engine.connect() as connection:
            payloads = connection.execution_options(yield_per=1000).scalars(
                query.order_by(SampleRow.position)
            )
            return [Sample.model_validate_json(payload) for payload in payloads]

    def sample_status(self, run_id: str) -> dict[str, tuple[str, str | None]]:
        """Sample id → (status, error message)."""
        self._drain()
        with Session(self._engine) as session:
            rows = session.execute(
                select(SampleRow.sample_id, SampleRow.status, SampleRow.error).where(
                    SampleRow.run_id == run_id
                )
            )
            return {sid: (status, error) for sid, status, error in rows}

    def mark_sample(
        self, run_id: str, sample_id: str, status: SampleStatus, error: str | None = None
    ) -> None:
        """Record that a sample finished, or why it failed (committed after its calls)."""
        if sample_id not in self._known_samples(run_id):
            raise StoreError(f"run {run_id!r} has no sample {sample_id!r}")
        values = {"b_run": run_id, "b_sample": sample_id, "b_status": status, "b_error": error}
        self._enqueue(Write("mark", values))

    # calls ----------------------------------------------------------------------------------
    def cached_reply(self, run_id: str, key: str) -> Reply | None:
        """The reply of a call already made in this run, if any (queued ones included)."""
        if key not in self._known_calls(run_id):
            return None
        with self._cond:
            queued = self._pending_calls.get((run_id, key))
        if queued is not None:
            return Reply.model_validate(queued["reply"])
        with Session(self._engine) as session:
            payload = session.scalar(
                select(CallRow.reply).where(CallRow.run_id == run_id, CallRow.request_hash == key)
            )
        return None if payload is None else Reply.model_validate(payload)

    def record_call(
        self,
        run_id: str,
        *,
        sample_id: str,
        turn: int,
        role: CallRole,
        key: str,
        reply: Reply,
    ) -> None:
        """Store one returned call; a duplicate (same run and hash) is ignored."""
        known = self._known_calls(run_id)
        if key in known:
            self._raise_failure()
            return
        values = {
            "run_id": run_id,
            "sample_id": sample_id,
            "turn": turn,
            "role": role,
            "model": reply.model,
            "request_hash": key,
            "reply": reply.model_dump(mode="json"),
            "latency_s": reply.latency_s,
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "created_at": now(),
        }
        self._enqueue(Write("call", values))
        known.add(key)

    def replies_by_turn(
        self, run_id: str, role: CallRole = "target"
    ) -> dict[tuple[str, int], Reply]:
        """(sample id, turn) → reply of one role's calls; of two calls, the later one.

        JSON text straight into `Reply`, in batches: `calls` builds an ORM row per call, which
        for a run of 80,000 calls costs seconds and hundreds of MB.
        """
        self._drain()
        query = select(CallRow.sample_id, CallRow.turn, sql_cast(CallRow.reply, Text)).where(
            CallRow.run_id == run_id, CallRow.role == role
        )
        with self._engine.connect() as connection:
            rows = connection.execution_options(yield_per=2000).execute(query.order_by(CallRow.id))
            return {
                (sid, turn): _all_fields_set(Reply.model_validate_json(reply))
                for sid, turn, reply in rows
            }

    def calls(self, run_id: str) -> list[CallRow]:
        """All calls of a run in the order they returned."""
        self._drain()
        with Session(self._engine, expire_on_commit=False) as session:
            return list(
                session.scalars(
                    select(CallRow).where(CallRow.run_id == run_id).order_by(CallRow.id)
                )
            )

    # verdicts -------------------------------------------------------------------------------
    def record_verdict(self, run_id: str, verdict: Verdict) -> None:
        """Store one verdict; a repeat for the same (sample, turn, judge) replaces it."""
        key = (verdict.sample_id, verdict.turn, verdict.judge)
        known = self._known_verdicts(run_id)
        values = {
            "run_id": run_id,
            "sample_id": verdict.sample_id,
            "turn": verdict.turn,
            "judge": verdict.judge,
            "label": verdict.label,
            "refused": verdict.refused,
            "score": verdict.score,
            "rationale": verdict.rationale,
            "created_at": now(),
        }
        self._enqueue(Write("verdict", values, replace=key in known))
        known.add(key)

    def verdicts(self, run_id: str) -> list[Verdict]:
        """All verdicts of a run (their columns, in batches: no ORM row per verdict)."""
        self._drain()
        columns = [getattr(VerdictRow, name) for name in VERDICT_FIELDS]
        query = select(*columns).where(VerdictRow.run_id == run_id).order_by(VerdictRow.id)
        with self._engine.connect() as connection:
            rows = connection.execution_options(yield_per=2000).execute(query)
            return [
                _all_fields_set(Verdict(**dict(zip(VERDICT_FIELDS, row, strict=True))))
                for row in rows
            ]

    def get_verdict(self, run_id: str, sample_id: str, turn: int, judge: str) -> Verdict | None:
        """The stored verdict of one judge on one turn, if it was already given."""
        if (sample_id, turn, judge) not in self._known_verdicts(run_id):
            return None
        with self._cond:
            queued = self._pending_verdicts.get((run_id, sample_id, turn, judge))
        if queued is not None:
            return Verdict(**{name: queued[name] for name in VERDICT_FIELDS})
        with Session(self._engine) as session:
            row = session.scalar(
                select(VerdictRow).where(
                    VerdictRow.run_id == run_id,
                    VerdictRow.sample_id == sample_id,
                    VerdictRow.turn == turn,
                    VerdictRow.judge == judge,
                )
            )
            return None if row is None else _verdict(row)

    # indexes --------------------------------------------------------------------------------
    def reload_sample_keys(self, run_id: str, sample_ids: Sequence[str]) -> None:
        """Add the calls and verdicts stored for these samples to the in-memory indexes.

        The indexes are read once per run; a worker that takes over a sample another worker
        started must see what that worker stored since, or it would call the model again.
        """
        if not sample_ids:
            return
        calls, verdicts = self._known_calls(run_id), self._known_verdicts(run_id)
        ids = list(sample_ids)
        with self._engine.connect() as connection:
            calls.update(
                connection.scalars(
                    select(CallRow.request_hash).where(
                        CallRow.run_id == run_id, CallRow.sample_id.in_(ids)
                    )
                )
            )
            rows = connection.execute(
                select(VerdictRow.sample_id, VerdictRow.turn, VerdictRow.judge).where(
                    VerdictRow.run_id == run_id, VerdictRow.sample_id.in_(ids)
                )
            )
            verdicts.update((sid, turn, judge) for sid, turn, judge in rows)

    def _known_calls(self, run_id: str) -> set[str]:
        if run_id not in self._call_keys:
            with Session(self._engine) as session:
                query = select(CallRow.request_hash).where(CallRow.run_id == run_id)
                self._call_keys[run_id] = set(session.scalars(query))
        return self._call_keys[run_id]

    def _known_verdicts(self, run_id: str) -> set[tuple[str, int, str]]:
        if run_id not in self._verdict_keys:
            with Session(self._engine) as session:
                rows = session.execute(
                    select(VerdictRow.sample_id, VerdictRow.turn, VerdictRow.judge).where(
                        VerdictRow.run_id == run_id
                    )
                )
                self._verdict_keys[run_id] = {(sid, turn, judge) for sid, turn, judge in rows}
        return self._verdict_keys[run_id]

    def _known_samples(self, run_id: str) -> set[str]:
        if run_id not in self._sample_ids:
            with Session(self._engine) as session:
                query = select(SampleRow.sample_id).where(SampleRow.run_id == run_id)
                self._sample_ids[run_id] = set(session.scalars(query))
        return self._sample_ids[run_id]


_FIELD_SETS: dict[type[BaseModel], set[str]] = {}
_Model = TypeVar("_Model", bound=BaseModel)


def _all_fields_set(model: _Model) -> _Model:
    """`model`, its `model_fields_set` (every field: rows are stored whole) shared by its type.

    Pydantic gives each instance its own set of the fields it was given, 0.7 KB for a
    `Verdict` or a `Reply`: 110 MB for a run's 80,000 calls and verdicts read back at once.
    Adding a name a shared set already holds (what setting an attribute does) changes nothing.
    """
    shared = _FIELD_SETS.get(type(model))
    if shared is None:
        shared = _FIELD_SETS[type(model)] = set(type(model).model_fields)
    if model.model_fields_set == shared:
        object.__setattr__(model, "__pydantic_fields_set__", shared)
    return model


def _verdict(row: VerdictRow) -> Verdict:
    return Verdict(
        sample_id=row.sample_id,
        turn=row.turn,
        judge=row.judge,
        label=row.label,  # type: ignore[arg-type]
        refused=row.refused,
        score=row.score,
        rationale=row.rationale,
    )
