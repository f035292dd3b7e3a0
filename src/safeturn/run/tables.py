"""Every table of the run database, under one SQLAlchemy metadata (`Base.metadata`).

The run store's tables and the guard's decision log share one database and one schema
version: `safeturn.run.migrate` brings a database to the revision these classes describe
before either module touches it. Changing a table here needs a new revision in
`run/migrations/versions/` (the test `test_migrations_match_the_tables` says when one is due).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from safeturn.run.database import FreeText, UTCDateTime


def now() -> datetime:
    """The current time, aware and in UTC: every `created_at`."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """The one declarative base: its metadata holds every table of the run database."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON}


class RunRow(Base):
    """One evaluation (or guard, or training) run."""

    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), default="eval")
    config: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="running")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class SampleRow(Base):
    """A sample as the run saw it, and whether it finished."""

    __tablename__ = "samples"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    sample_id: Mapped[str] = mapped_column(Text, primary_key=True)  # any length, on PostgreSQL too
    position: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(FreeText)


class CallRow(Base):
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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)


class VerdictRow(Base):
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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)


class WorkerRow(Base):
    """A worker process sharing a run with others (see `safeturn.run.claims`)."""

    __tablename__ = "run_workers"
    token: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    heartbeat: Mapped[float] = mapped_column(Float)


class ClaimRow(Base):
    """A sample one worker took in the run's current round; the key makes a claim exclusive."""

    __tablename__ = "sample_claims"
    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sample_id: Mapped[str] = mapped_column(Text, primary_key=True)
    worker: Mapped[str] = mapped_column(String(32), index=True)


class LeaseRow(Base):
    """The process running a run now, if any (see `safeturn.run.lease`)."""

    __tablename__ = "run_leases"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    token: Mapped[str] = mapped_column(String(32))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    heartbeat: Mapped[float] = mapped_column(Float)
    """`time.time()` of the holder's last renewal."""


class DecisionRow(Base):
    """One guard decision as stored (see `safeturn.guard.decisions`): numbers and labels."""

    __tablename__ = "guard_decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    decision_id: Mapped[str] = mapped_column(String(32), unique=True)
    run_id: Mapped[str | None] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    model: Mapped[str] = mapped_column(FreeText)  # as the client sent it: any length
    moderator: Mapped[str] = mapped_column(FreeText)
    mode: Mapped[str] = mapped_column(String(16))
    action: Mapped[str | None] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(32))
    status: Mapped[int] = mapped_column(Integer)
    flagged: Mapped[bool] = mapped_column(Boolean)
    risk: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    category: Mapped[str | None] = mapped_column(String(64))
    strategy: Mapped[str] = mapped_column(String(32))
    earliest_turn: Mapped[int | None] = mapped_column(Integer)
    stage: Mapped[str | None] = mapped_column(String(16))
    reply_score: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(FreeText)
    turns: Mapped[int] = mapped_column(Integer)
    images: Mapped[int] = mapped_column(Integer)
    stream: Mapped[bool] = mapped_column(Boolean)
    moderator_ms: Mapped[float | None] = mapped_column(Float)
    upstream_ms: Mapped[float | None] = mapped_column(Float)
    total_ms: Mapped[float] = mapped_column(Float)
    content: Mapped[dict[str, Any] | None] = mapped_column(JSON)
