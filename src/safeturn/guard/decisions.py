"""Guard decisions in the run database: one content-free row per screened request.

The table (`DecisionRow`, in `run/tables.py`) lives beside the run tables, in the same database
and under the same metadata and schema revision: opening the log migrates the database as
opening a `RunStore` does. A serving proxy creates a `runs` row of kind `guard` through
`RunStore`, and every decision it makes points at it.

Rows hold numbers and labels only. Message text and reply text are stored only when the proxy
is started with an explicit flag, and then with images as sha256 hashes, never bytes. Writes go
through a background queue so a request never waits on the database; `flush` waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from safeturn.redact import redact_url_credentials
from safeturn.run.database import database_engine, database_url
from safeturn.run.migrate import migrate
from safeturn.run.tables import DecisionRow, now

__all__ = ["Decision", "DecisionLog", "DecisionRow"]

logger = logging.getLogger(__name__)

_BATCH = 256


@dataclass(frozen=True)
class Decision:
    """What the proxy records about one screened request (field names match the columns)."""

    decision_id: str
    model: str
    moderator: str
    mode: str
    action: str | None
    """The guard's action, or None when the upstream failed before a reply existed."""
    outcome: str
    """`ok`, `upstream_error` or `upstream_timeout`."""
    status: int
    flagged: bool
    turns: int
    images: int
    stream: bool
    total_ms: float
    risk: float | None = None
    threshold: float | None = None
    category: str | None = None
    strategy: str = "none"
    earliest_turn: int | None = None
    stage: str | None = None
    reply_score: float | None = None
    error: str | None = None
    moderator_ms: float | None = None
    upstream_ms: float | None = None
    content: dict[str, Any] | None = None
    """Messages and reply, only when content storage was asked for explicitly."""
    run_id: str | None = None
    created_at: datetime = field(default_factory=now)


class DecisionLog:
    """Writes decisions to `guard_decisions` in the background, one batch per transaction.

    Args:
        target: A SQLAlchemy URL or a file path (SQLite), as for `RunStore`.
        max_pending: Decisions queued at most; beyond it new ones are dropped and counted,
            so a slow database cannot exhaust memory.
    """

    def __init__(self, target: str | Path, *, max_pending: int = 10_000) -> None:
        url = database_url(target)
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self._engine: Engine = database_engine(url)
        try:
            migrate(self._engine, redact_url_credentials(url))
        except BaseException:
            self._engine.dispose()
            raise
        self._max_pending = max_pending
        self._queue: asyncio.Queue[Decision] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.dropped = 0
        self.failed = 0

    def submit(self, decision: Decision) -> bool:
        """Queue `decision` for writing; False when the queue was full and it was dropped."""
        queue = self._ensure_writer()
        try:
            queue.put_nowait(decision)
        except asyncio.QueueFull:
            self.dropped += 1
            logger.error("guard decision queue is full; dropped decision %s", decision.decision_id)
            return False
        return True

    async def flush(self) -> None:
        """Wait until every queued decision has been written (or has failed to be)."""
        if self._queue is not None:
            await self._queue.join()

    def write(self, decisions: list[Decision]) -> None:
        """Insert decisions now, in one transaction (the writer's path; also for scripts)."""
        if decisions:
            with self._engine.begin() as connection:
                connection.execute(insert(DecisionRow), [asdict(d) for d in decisions])

    def rows(self, run_id: str | None = None) -> list[DecisionRow]:
        """Stored decisions in write order, optionally of one run only."""
        query = select(DecisionRow).order_by(DecisionRow.id)
        if run_id is not None:
            query = query.where(DecisionRow.run_id == run_id)
        with Session(self._engine, expire_on_commit=False) as session:
            return list(session.scalars(query))

    async def aclose(self) -> None:
        """Write what is queued, stop the writer and release the connections."""
        await self.flush()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        self._engine.dispose()

    def _ensure_writer(self) -> asyncio.Queue[Decision]:
        if self._queue is None or self._writer is None or self._writer.done():
            self._queue = asyncio.Queue(self._max_pending)
            self._writer = asyncio.get_running_loop().create_task(self._write_forever(self._queue))
        return self._queue

    async def _write_forever(self, queue: asyncio.Queue[Decision]) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < _BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await asyncio.to_thread(self.write, batch)
            except Exception as exc:  # a database outage must not stop the proxy
                self.failed += len(batch)
                logger.error(
                    "writing %d guard decisions failed (%s)", len(batch), type(exc).__name__
                )
            finally:
                for _ in batch:
                    queue.task_done()
