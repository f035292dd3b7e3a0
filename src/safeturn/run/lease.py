"""One process at a time runs a run: a lease row with the holder's host, pid and heartbeat.

Two `--resume` of the same run would answer the same samples twice and race on every verdict.
The first to start takes the run's lease (`RunStore.claim_lease`) and renews it from a daemon
thread; the second finds it held and stops with `RunBusyError`, naming the holder's pid, before
it calls anything. A lease is free again when its holder releases it, when its heartbeat is
older than `stale_after_s`, or at once when its holder was a process on this host that is gone
(a `kill -9` followed by `--resume` must not wait). Sharing one run among several live workers
(row claims) is not done here.

Leases are re-entrant within a process: `execute` holds the run while it loads the model, and
`execute_run` inside it takes the same lease again without a second row.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple

from safeturn.errors import RunBusyError as RunBusyError

if TYPE_CHECKING:
    from safeturn.run.store import RunStore

logger = logging.getLogger(__name__)

STALE_AFTER_S = 60.0
"""A lease whose heartbeat is older than this is free (its holder hung or lost its host)."""
HEARTBEAT_S = 10.0
"""How often a holder renews its lease."""


class Holder(NamedTuple):
    """Who holds a lease: a token unique to one lease, the host and the process id."""

    token: str
    host: str
    pid: int
    heartbeat: float
    """`time.time()` of the last renewal."""


def holder_alive(holder: Holder, *, stale_after_s: float, now: float | None = None) -> bool:
    """Whether a lease's holder may still be working.

    It needs a fresh heartbeat; on this host, also a process that is still there (and, for
    this very process, a lease it has not let go).
    """
    now = time.time() if now is None else now
    if now - holder.heartbeat > stale_after_s:
        return False
    if holder.host != socket.gethostname():
        return True
    if holder.pid == os.getpid():
        with _LOCK:
            return any(lease.token == holder.token for lease, _ in _HELD.values())
    return pid_alive(holder.pid)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust the signal check
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


class Heartbeat:
    """A daemon thread that calls `renew` every `interval_s` until stopped or it returns False.

    A renewal that raises (a database hiccup) is tried again at the next beat.
    """

    def __init__(self, renew: Callable[[], bool], interval_s: float, name: str) -> None:
        self._renew = renew
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=name, daemon=True)

    def start(self) -> None:
        """Start beating."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and wait for the thread to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                if not self._renew():
                    return
            except Exception:
                continue


class RunLease:
    """Hold a run's lease for a `with` block; a heartbeat thread renews it.

    Raises `RunBusyError` on entry when another live process holds it. `lost` is set when a
    renewal finds the lease taken (this process stalled past `stale_after_s`): the engine then
    starts no new sample.
    """

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        *,
        stale_after_s: float = STALE_AFTER_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.token = uuid.uuid4().hex
        self.lost = threading.Event()
        self._heartbeat: Heartbeat | None = None
        self._key = (store.url, run_id)
        self._outer: RunLease | None = None

    def __enter__(self) -> RunLease:
        with _LOCK:
            held = _HELD.get(self._key)
            if held is not None:  # re-entry in this process: share the outer lease
                _HELD[self._key] = (held[0], held[1] + 1)
                self._outer = held[0]
                self.lost = held[0].lost
                return self
        holder = Holder(self.token, socket.gethostname(), os.getpid(), time.time())
        self.store.claim_lease(
            self.run_id,
            holder,
            busy=lambda other: holder_alive(other, stale_after_s=self.stale_after_s),
        )
        with _LOCK:
            _HELD[self._key] = (self, 1)
        self._heartbeat = Heartbeat(self._renew, self.heartbeat_s, f"safeturn-lease-{self.run_id}")
        self._heartbeat.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with _LOCK:
            lease, count = _HELD[self._key]
            if count > 1:
                _HELD[self._key] = (lease, count - 1)
                return
            del _HELD[self._key]
        if self._heartbeat is not None:
            self._heartbeat.stop()
        try:
            self.store.release_lease(self.run_id, self.token)
        except Exception as exc:  # never hide the error the block ended with
            logger.warning(
                "run %s: could not release its lease (%s); it goes stale", self.run_id, exc
            )

    def _renew(self) -> bool:
        if self.store.renew_lease(self.run_id, self.token):
            return True
        self.lost.set()
        return False


_LOCK = threading.Lock()
_HELD: dict[tuple[str, str], tuple[RunLease, int]] = {}
"""Leases this process holds, by (database URL, run id), with their nesting depth."""
