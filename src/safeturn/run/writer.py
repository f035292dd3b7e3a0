"""Write-behind for the run store: queued writes committed in groups by a writer thread.

Writes go to an in-memory queue that a writer thread commits as one transaction per group,
`window_s` after the first write of the group (5 ms by default). One commit per group rather
than one per call is what lets a run keep up with a fast server. A `kill -9` loses at most the
writes of the last window plus the commit under way. `durability="sync"` commits each write
before it returns instead. A group that fails is redone one write at a time, which skips a call
another process stored first, replaces such a verdict, and names the write that really failed.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from safeturn.errors import StoreError
from safeturn.redact import redact_url_credentials
from safeturn.run.tables import CallRow
from safeturn.run.writes import Write, execute_group, write_error

logger = logging.getLogger(__name__)

Durability = Literal["group", "sync"]

DEFAULT_WINDOW_S = 0.005
"""How long the writer waits after a group's first write: the most a `kill -9` can lose."""
_IDLE_EXIT_S = 1.0
"""An idle writer thread ends after this; the next write starts another."""


class WriteBehind:
    """The queue, its writer thread and its failure; `RunStore` builds on it.

    Reads see queued writes through `_pending_calls` / `_pending_verdicts` (by key) until they
    are committed. A failed group commit is kept: every later write, `flush` and `close` raises
    it as a `StoreError`, and nothing queued after it is committed (so no done-mark can outlive
    its calls).
    """

    def __init__(
        self,
        engine: Engine,
        shown_url: str,
        *,
        durability: Durability,
        window_s: float,
        max_pending: int,
    ) -> None:
        if durability not in ("group", "sync"):
            raise ValueError(f"durability must be 'group' or 'sync', got {durability!r}")
        if window_s < 0 or max_pending < 1:
            raise ValueError("window_s must be >= 0 and max_pending >= 1")
        self._engine = engine
        self._shown_url = shown_url
        self.durability: Durability = durability
        self.window_s = window_s
        self.max_pending = max_pending
        self._cond = threading.Condition()
        self._queue: list[Write] = []
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

    def _enqueue(self, write: Write) -> None:
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

    def _commit(self, group: list[Write]) -> None:
        try:
            with self._engine.begin() as connection:
                execute_group(connection, group)
        except Exception:  # redone one by one, which skips duplicates and names the culprit
            self._commit_each(group)

    def _commit_each(self, group: list[Write]) -> None:
        """One transaction per write, in queue order; the first real failure stops the rest.

        A call that another worker stored first (same run and hash) is skipped, as in sync
        mode; a verdict another worker stored first is replaced, as a repeat in this process
        would be: the last verdict on a turn wins.
        """
        for write in group:
            try:
                with self._engine.begin() as connection:
                    execute_group(connection, [write])
            except IntegrityError as exc:
                self._settle_conflict(write, exc)
            except Exception as exc:
                raise write_error(self._shown_url, write, exc) from exc

    def _settle_conflict(self, write: Write, exc: IntegrityError) -> None:
        """A write that hit a stored row with its key: skip a call, replace a verdict."""
        try:
            if write.kind == "call" and self._call_stored(*write.key()):
                return
            if write.kind == "verdict" and not write.replace:
                with self._engine.begin() as connection:
                    execute_group(connection, [write._replace(replace=True)])
                return
        except Exception as retry:  # the database went away mid-check
            raise write_error(self._shown_url, write, retry) from exc
        raise write_error(self._shown_url, write, exc) from exc

    def _call_stored(self, run_id: str, key: str) -> bool:
        """Whether a call with this hash is in the database (a duplicate, not a failure)."""
        query = select(CallRow.id).where(CallRow.run_id == run_id, CallRow.request_hash == key)
        with self._engine.connect() as connection:
            return connection.scalar(query) is not None

    def _forget(self, group: list[Write]) -> None:
        """Drop committed (or failed) writes from the read-through maps, not later ones."""
        with self._cond:
            for write in group:
                pending = self._pending_map(write)
                if pending is not None and pending.get(write.key()) is write.values:
                    del pending[write.key()]

    def _pending_map(self, write: Write) -> dict[tuple[Any, ...], dict[str, Any]] | None:
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


_OPEN_STORES: weakref.WeakSet[WriteBehind] = weakref.WeakSet()


@atexit.register
def _flush_open_stores() -> None:
    """A store that was never closed still commits its queue when the interpreter exits."""
    for store in list(_OPEN_STORES):
        try:
            store.flush()
        except StoreError as exc:
            logger.error("%s", exc)
