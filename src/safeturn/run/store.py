"""The run database: every call and verdict is stored as it returns, in group commits.

Writes go to an in-memory queue that a writer thread commits as one transaction per group,
`window_s` after the first write of the group (5 ms by default). One commit per group rather
than one per call is what lets a run keep up with a fast server. Reads see every write at
once, queued or committed. A `kill -9` loses at most the writes of the last window plus the
commit under way; `--resume` then redoes just those calls, as `cached_reply` finds every call
already stored (keyed by a hash of model, dialogue, sampling options and place). A sample's
done-mark is committed with or after its calls and verdicts, never before, so a sample marked
done is complete. `durability="sync"` commits each write before it returns instead.

SQLite by default, or PostgreSQL (`run/database.py`; the tests run on both). One process at a
time runs a run: it holds the run's lease (`run.lease`), and a second resume stops with a clear
error. Writes are idempotent all the same: a call or a verdict that another process stored
first is skipped or replaced, never a crash.
API keys never reach this module: `create_run` drops config keys that look like secrets.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring as _quote  # json.dumps's, with ensure_ascii=False
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar, cast

from pydantic import BaseModel
from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from safeturn.errors import StoreError
from safeturn.redact import redact_url_credentials, scrub_secrets
from safeturn.run.database import (
    FreeText,
    UTCDateTime,
    create_tables,
    database_engine,
    database_url,
)
from safeturn.run.lease import Holder, RunBusyError
from safeturn.schema import (
    Dialogue,
    GenerateParams,
    ImagePart,
    Message,
    Reply,
    Sample,
    TextPart,
    Verdict,
)

logger = logging.getLogger(__name__)

CallRole = Literal["target", "judge", "attacker", "expert"]
SampleStatus = Literal["pending", "done", "error"]
RunStatus = Literal["running", "done", "failed"]


def _now() -> datetime:
    return datetime.now(UTC)


class _Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON}


class RunRow(_Base):
    """One evaluation (or guard, or training) run."""

    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), default="eval")
    config: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="running")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class SampleRow(_Base):
    """A sample as the run saw it, and whether it finished."""

    __tablename__ = "samples"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    sample_id: Mapped[str] = mapped_column(Text, primary_key=True)  # any length, on PostgreSQL too
    position: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(FreeText)


class CallRow(_Base):
    """One model call that returned."""

    __tablename__ = "model_calls"
    __table_args__ = (
        UniqueConstraint("run_id", "request_hash"),
        # A worker taking a sample over reads that sample's calls (`reload_sample_keys`).
        Index("ix_model_calls_run_sample", "run_id", "sample_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    sample_id: Mapped[str] = mapped_column(Text)
    turn: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(FreeText)
    request_hash: Mapped[str] = mapped_column(String(64))
    reply: Mapped[dict[str, Any]]
    latency_s: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)


class VerdictRow(_Base):
    """One judge decision on one turn of one sample."""

    __tablename__ = "verdicts"
    __table_args__ = (UniqueConstraint("run_id", "sample_id", "turn", "judge"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    sample_id: Mapped[str] = mapped_column(Text)
    turn: Mapped[int] = mapped_column(Integer)
    judge: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(16))
    refused: Mapped[bool | None]
    score: Mapped[float | None] = mapped_column(Float)
    rationale: Mapped[str] = mapped_column(FreeText, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)


class WorkerRow(_Base):
    """A worker process sharing a run with others (see `safeturn.run.claims`)."""

    __tablename__ = "run_workers"
    token: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    heartbeat: Mapped[float] = mapped_column(Float)


class ClaimRow(_Base):
    """A sample one worker took in the run's current round; the key makes a claim exclusive."""

    __tablename__ = "sample_claims"
    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sample_id: Mapped[str] = mapped_column(Text, primary_key=True)
    worker: Mapped[str] = mapped_column(String(32), index=True)


class LeaseRow(_Base):
    """The process running a run now, if any (see `safeturn.run.lease`)."""

    __tablename__ = "run_leases"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    token: Mapped[str] = mapped_column(String(32))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    heartbeat: Mapped[float] = mapped_column(Float)
    """`time.time()` of the holder's last renewal."""


_CALL_INDEXES = cast("Table", CallRow.__table__).indexes

Durability = Literal["group", "sync"]

DEFAULT_WINDOW_S = 0.005
"""How long the writer waits after a group's first write: the most a `kill -9` can lose."""
_IDLE_EXIT_S = 1.0
"""An idle writer thread ends after this; the next write starts another."""


@functools.lru_cache(maxsize=256)
def _params_json(params: GenerateParams) -> str:
    return json.dumps(params.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)


def request_hash(model: str, dialogue: Dialogue, params: GenerateParams, *, scope: str = "") -> str:
    """A stable key of one call: images enter by content hash, not by path or bytes.

    `scope` says *which* call this is (sample, turn, attempt): two samples with the same
    dialogue are two calls with two rows, or one of them would vanish from its results.
    The key is the sha256 of `json.dumps({"messages": [{"parts": [text | {"image": hash}],
    "role"}], "model", "params", "scope"}, sort_keys=True, ensure_ascii=False)`, written out
    by hand here (a third of the cost); keep it byte-identical, or stored runs stop resuming.
    """
    messages = ", ".join([_message_json(message) for message in dialogue.messages])
    blob = (
        f'{{"messages": [{messages}], "model": {_quote(model)}, '
        f'"params": {_params_json(params)}, "scope": {_quote(scope)}}}'
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _message_json(message: Message) -> str:
    parts = ", ".join(
        [
            _quote(part.text) if isinstance(part, TextPart) else f'{{"image": {_image_ref(part)}}}'
            for part in message.parts
        ]
    )
    return f'{{"parts": [{parts}], "role": {_quote(message.role)}}}'


def _image_ref(part: ImagePart) -> str:
    """A remote image by its URL (never fetched), any other by the sha256 of its bytes."""
    return _quote(part.url if part.url is not None and part.is_remote else part.sha256())


class _Write(NamedTuple):
    """One queued write: a call, a verdict or a sample's done/error mark."""

    kind: Literal["call", "verdict", "mark"]
    values: dict[str, Any]
    replace: bool = False
    """For a verdict: a stored verdict with the same key is deleted first."""

    def key(self) -> tuple[Any, ...]:
        """Identity of the row it writes: (run, hash), (run, sample, turn, judge), (run, sample)."""
        v = self.values
        if self.kind == "call":
            return (v["run_id"], v["request_hash"])
        if self.kind == "verdict":
            return (v["run_id"], v["sample_id"], v["turn"], v["judge"])
        return (v["b_run"], v["b_sample"])

    def describe(self) -> str:
        """The write, for error messages."""
        v = self.values
        if self.kind == "call":
            where = f"sample {v['sample_id']!r} turn {v['turn']} {v['role']}"
            return f"call (run {v['run_id']}, {where}, hash {v['request_hash'][:12]})"
        if self.kind == "verdict":
            where = f"sample {v['sample_id']!r} turn {v['turn']} judge {v['judge']!r}"
            return f"verdict (run {v['run_id']}, {where})"
        return f"mark (run {v['b_run']}, sample {v['b_sample']!r} → {v['b_status']})"


_INSERT_CALL = insert(CallRow)
_INSERT_VERDICT = insert(VerdictRow)
_DELETE_VERDICT = delete(VerdictRow).where(
    VerdictRow.run_id == bindparam("b_run"),
    VerdictRow.sample_id == bindparam("b_sample"),
    VerdictRow.turn == bindparam("b_turn"),
    VerdictRow.judge == bindparam("b_judge"),
)
_MARK_SAMPLE = (
    update(SampleRow)
    .where(SampleRow.run_id == bindparam("b_run"), SampleRow.sample_id == bindparam("b_sample"))
    .values(status=bindparam("b_status"), error=bindparam("b_error"))
)
_VERDICT_FIELDS = ("sample_id", "turn", "judge", "label", "refused", "score", "rationale")


def _execute_group(connection: Connection, group: Sequence[_Write]) -> None:
    """One executemany per statement; marks go last, after the calls and verdicts they follow."""
    calls = [w.values for w in group if w.kind == "call"]
    verdicts: dict[tuple[Any, ...], dict[str, Any]] = {}
    replaced: set[tuple[Any, ...]] = set()
    for w in group:
        if w.kind == "verdict":
            key = w.key()
            verdicts.pop(key, None)  # a repeat within the group: the last one wins, in order
            verdicts[key] = w.values
            if w.replace:
                replaced.add(key)
    marks = [w.values for w in group if w.kind == "mark"]
    if calls:
        connection.execute(_INSERT_CALL, calls)
    if replaced:
        keys = [
            dict(zip(("b_run", "b_sample", "b_turn", "b_judge"), k, strict=True)) for k in replaced
        ]
        connection.execute(_DELETE_VERDICT, keys)
    if verdicts:
        connection.execute(_INSERT_VERDICT, list(verdicts.values()))
    if marks:
        connection.execute(_MARK_SAMPLE, marks)


class RunStore:
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
    no done-mark can outlive its calls). Resume the run from a new store.
    """

    def __init__(
        self,
        target: str | Path,
        *,
        durability: Durability = "group",
        window_s: float = DEFAULT_WINDOW_S,
        max_pending: int = 10_000,
    ) -> None:
        if durability not in ("group", "sync"):
            raise ValueError(f"durability must be 'group' or 'sync', got {durability!r}")
        if window_s < 0 or max_pending < 1:
            raise ValueError("window_s must be >= 0 and max_pending >= 1")
        url = database_url(target)
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self._shown_url = redact_url_credentials(url)  # for messages: no database password
        self.durability: Durability = durability
        self.window_s = window_s
        self.max_pending = max_pending
        self._engine: Engine = database_engine(url)
        create_tables(_Base.metadata, self._engine, self._shown_url)
        for index in _CALL_INDEXES:  # create_all adds none to a table that already exists
            index.create(self._engine, checkfirst=True)
        # Per-run indexes of what is stored or queued, loaded once: a fresh call or verdict
        # then costs no lookup query.
        self._call_keys: dict[str, set[str]] = {}
        self._verdict_keys: dict[str, set[tuple[str, int, str]]] = {}
        self._sample_ids: dict[str, set[str]] = {}
        # The queue, and what it holds by key so that reads see it before it is committed.
        self._cond = threading.Condition()
        self._queue: list[_Write] = []
        self._pending_calls: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._pending_verdicts: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._oldest = 0.0  # when the oldest queued write was queued
        self._writer: threading.Thread | None = None
        self._closing = False
        self._failure: StoreError | None = None
        self._write_lock = threading.Lock()  # one committer at a time, in queue order

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for the modules that keep their own tables here."""
        return self._engine

    def flush(self) -> None:
        """Commit everything queued; raise the writer's failure, if there was one."""
        self._drain()

    def close(self) -> None:
        """Commit everything queued, stop the writer and dispose of pooled connections."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        try:
            self._drain()
        finally:
            with self._cond:
                writer = self._writer
            if writer is not None:
                writer.join()
            self._engine.dispose()
            _OPEN_STORES.discard(self)

    # runs -----------------------------------------------------------------------------------
    def create_run(
        self, config: dict[str, Any], *, kind: str = "eval", samples: Sequence[Sample] = ()
    ) -> str:
        """Create a run, with its samples in the same transaction, and return its id.

        A run never exists without the samples it was started with: if they cannot be stored,
        neither is the run.
        """
        run_id = uuid.uuid4().hex[:12]
        rows = _sample_rows(run_id, samples)
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
            row.finished_at = _now()

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
        rows = _sample_rows(run_id, samples)
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
        self._enqueue(_Write("mark", values))

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
            "created_at": _now(),
        }
        self._enqueue(_Write("call", values))
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
            "created_at": _now(),
        }
        self._enqueue(_Write("verdict", values, replace=key in known))
        known.add(key)

    def verdicts(self, run_id: str) -> list[Verdict]:
        """All verdicts of a run (their columns, in batches: no ORM row per verdict)."""
        self._drain()
        columns = [getattr(VerdictRow, name) for name in _VERDICT_FIELDS]
        query = select(*columns).where(VerdictRow.run_id == run_id).order_by(VerdictRow.id)
        with self._engine.connect() as connection:
            rows = connection.execution_options(yield_per=2000).execute(query)
            return [
                _all_fields_set(Verdict(**dict(zip(_VERDICT_FIELDS, row, strict=True))))
                for row in rows
            ]

    def get_verdict(self, run_id: str, sample_id: str, turn: int, judge: str) -> Verdict | None:
        """The stored verdict of one judge on one turn, if it was already given."""
        if (sample_id, turn, judge) not in self._known_verdicts(run_id):
            return None
        with self._cond:
            queued = self._pending_verdicts.get((run_id, sample_id, turn, judge))
        if queued is not None:
            return Verdict(**{name: queued[name] for name in _VERDICT_FIELDS})
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

    # the write queue ------------------------------------------------------------------------
    def _enqueue(self, write: _Write) -> None:
        """Queue a write for the writer thread, or commit it now in sync mode."""
        self._raise_failure()
        if self.durability == "sync":
            with self._write_lock:
                self._commit([write])
            return
        with self._cond:
            if not self._queue:
                self._oldest = time.monotonic()
            self._queue.append(write)
            pending = self._pending_map(write)
            if pending is not None:
                pending[write.key()] = write.values
            backlog = len(self._queue)
            if self._writer is None:
                _OPEN_STORES.add(self)  # flushed at exit even if nobody closes it
                self._writer = threading.Thread(
                    target=self._write_behind, name="safeturn-run-store", daemon=True
                )
                self._writer.start()
            elif backlog == 1:
                self._cond.notify()
        if backlog >= self.max_pending:
            self._drain()

    def _write_behind(self) -> None:
        """The writer thread: one group commit per window while writes keep coming."""
        while True:
            with self._cond:
                if not self._queue and not self._closing:
                    self._cond.wait(_IDLE_EXIT_S)
                if not self._queue or self._failure is not None:
                    self._writer = None
                    return
                wait = self._oldest + self.window_s - time.monotonic()
                if wait > 0 and not self._closing:
                    self._cond.wait(wait)  # let the group fill; close() cuts it short
            try:
                self._drain()
            except Exception as exc:  # kept in `_failure`; every later write raises it
                logger.error("%s; resume the run from a new store", exc)
                with self._cond:
                    self._writer = None
                return

    def _drain(self) -> None:
        """Commit the queue as one group, in this thread; raise (and keep) a failure."""
        with self._write_lock:
            with self._cond:
                group, self._queue = self._queue, []
            try:
                if group and self._failure is None:
                    self._commit(group)
            except Exception as exc:
                failure = (
                    exc
                    if isinstance(exc, StoreError)
                    else StoreError(
                        f"could not write {len(group)} queued rows to {self._shown_url}: "
                        + redact_url_credentials(str(exc))
                    )
                )
                if self.durability == "group":
                    self._failure = failure  # later writes may depend on these: stop here
                if failure is exc:
                    raise
                raise failure from exc
            finally:
                if group:
                    self._forget(group)
        self._raise_failure()

    def _commit(self, group: list[_Write]) -> None:
        try:
            with self._engine.begin() as connection:
                _execute_group(connection, group)
        except Exception:  # redone one by one, which skips duplicates and names the culprit
            self._commit_each(group)

    def _commit_each(self, group: list[_Write]) -> None:
        """One transaction per write, in queue order; the first real failure stops the rest.

        A call that another worker stored first (same run and hash) is skipped, as in sync
        mode; a verdict another worker stored first is replaced, as a repeat in this process
        would be: the last verdict on a turn wins.
        """
        for write in group:
            try:
                with self._engine.begin() as connection:
                    _execute_group(connection, [write])
            except IntegrityError as exc:
                self._settle_conflict(write, exc)
            except Exception as exc:
                raise _write_error(self._shown_url, write, exc) from exc

    def _settle_conflict(self, write: _Write, exc: IntegrityError) -> None:
        """A write that hit a stored row with its key: skip a call, replace a verdict."""
        try:
            if write.kind == "call" and self._call_stored(*write.key()):
                return
            if write.kind == "verdict" and not write.replace:
                with self._engine.begin() as connection:
                    _execute_group(connection, [write._replace(replace=True)])
                return
        except Exception as retry:  # the database went away mid-check
            raise _write_error(self._shown_url, write, retry) from exc
        raise _write_error(self._shown_url, write, exc) from exc

    def _call_stored(self, run_id: str, key: str) -> bool:
        """Whether a call with this hash is in the database (a duplicate, not a failure)."""
        query = select(CallRow.id).where(CallRow.run_id == run_id, CallRow.request_hash == key)
        with self._engine.connect() as connection:
            return connection.scalar(query) is not None

    def _forget(self, group: list[_Write]) -> None:
        """Drop committed (or failed) writes from the read-through maps, not later ones."""
        with self._cond:
            for write in group:
                pending = self._pending_map(write)
                if pending is not None and pending.get(write.key()) is write.values:
                    del pending[write.key()]

    def _pending_map(self, write: _Write) -> dict[tuple[Any, ...], dict[str, Any]] | None:
        if write.kind == "call":
            return self._pending_calls
        return self._pending_verdicts if write.kind == "verdict" else None

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise StoreError(str(self._failure)) from self._failure

    @contextlib.contextmanager
    def _session(self) -> Iterator[Session]:
        """A committed ORM transaction for the rare writes, after everything queued before."""
        self._drain()
        with self._write_lock, Session(self._engine) as session, session.begin():
            yield session

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


def _sample_rows(run_id: str, samples: Sequence[Sample]) -> list[dict[str, Any]]:
    return [
        {
            "run_id": run_id,
            "sample_id": sample.id,
            "position": position,
            "payload": sample.model_dump(mode="json", exclude_none=True),
            "status": "pending",
        }
        for position, sample in enumerate(samples)
    ]


def _write_error(url: str, write: _Write, exc: Exception) -> StoreError:
    detail = getattr(exc, "orig", None) or exc
    return StoreError(f"run store {url}: could not write {write.describe()}: {detail}")


_OPEN_STORES: weakref.WeakSet[RunStore] = weakref.WeakSet()


@atexit.register
def _flush_open_stores() -> None:
    """A store that was never closed still commits its queue when the interpreter exits."""
    for store in list(_OPEN_STORES):
        try:
            store.flush()
        except StoreError as exc:
            logger.error("%s", exc)


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
