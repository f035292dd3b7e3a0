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
from abc import ABC, abstractmethod
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
    """Whether a lease's holder may still be working (for this very process: a lease it holds)."""
    return process_alive(holder, stale_after_s=stale_after_s, now=now, held_here=_lease_held)


def process_alive(
    holder: Holder,
    *,
    stale_after_s: float,
    held_here: Callable[[str], bool],
    now: float | None = None,
) -> bool:
    """Whether a holder (of a lease or a worker's seat) may still be working.

    It needs a fresh heartbeat; on this host, also a process that is still there, and for this
    very process, a token it has not let go (`held_here(token)`).
    """
    now = time.time() if now is None else now
    if now - holder.heartbeat > stale_after_s:
        return False
    if holder.host != socket.gethostname():
        return True
    if holder.pid == os.getpid():
        return held_here(holder.token)
    return pid_alive(holder.pid)


def _lease_held(token: str) -> bool:
    with _LOCK:
        return any(lease.token == token for lease, _ in _HELD.values())


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


class Seat(ABC):
    """What one process holds in a run (its lease, a worker's seat), kept by a heartbeat thread.

    `lost` is set when a renewal finds it gone (this process stalled past `stale_after_s` and
    another took over): the engine then starts no new sample.
    """

    kind = "seat"
    """Names the heartbeat thread: `safeturn-{kind}-{run_id}`."""
    stalled = "this process stalled and lost its seat"
    """What losing the seat means, for the error that reports it."""

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

    def holder(self) -> Holder:
        """This process as the holder of the seat, with a heartbeat of now."""
        return Holder(self.token, socket.gethostname(), os.getpid(), time.time())

    def renew(self) -> bool:
        """Refresh the heartbeat; False (and `lost` set) when what this process held is gone."""
        if not self._renewed():
            self.lost.set()
        return not self.lost.is_set()

    @abstractmethod
    def _renewed(self) -> bool:
        """Refresh the heartbeat in the database; False when the row is no longer this one's."""

    @abstractmethod
    def _leave(self) -> None:
        """Give the seat up (the `with` block ended)."""

    def _start_heartbeat(self) -> None:
        name = f"safeturn-{self.kind}-{self.run_id}"
        self._heartbeat = Heartbeat(self.renew, self.heartbeat_s, name)
        self._heartbeat.start()

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._leave()


class RunLease(Seat):
    """Hold a run's lease for a `with` block; a heartbeat thread renews it.

    Raises `RunBusyError` on entry when another live process holds it; `lost` as in `Seat`.
    """

    kind = "lease"
    stalled = "this process stalled and another one took the run over"
    _outer: RunLease | None = None
    """The outer lease this one shares when it re-enters a lease this process holds."""

    @property
    def _key(self) -> tuple[str, str]:
        return (self.store.url, self.run_id)

    def __enter__(self) -> RunLease:
        with _LOCK:
            held = _HELD.get(self._key)
            if held is not None:  # re-entry in this process: share the outer lease
                _HELD[self._key] = (held[0], held[1] + 1)
                self._outer = held[0]
                self.lost = held[0].lost
                return self
        self.store.claim_lease(
            self.run_id,
            self.holder(),
            busy=lambda other: holder_alive(other, stale_after_s=self.stale_after_s),
        )
        with _LOCK:
            _HELD[self._key] = (self, 1)
        self._start_heartbeat()
        return self

    def _leave(self) -> None:
        with _LOCK:
            lease, count = _HELD[self._key]
            if count > 1:
                _HELD[self._key] = (lease, count - 1)
                return
            del _HELD[self._key]
        self._stop_heartbeat()
        try:
            self.store.release_lease(self.run_id, self.token)
        except Exception as exc:  # never hide the error the block ended with
            logger.warning(
                "run %s: could not release its lease (%s); it goes stale", self.run_id, exc
            )

    def _renewed(self) -> bool:
        return self.store.renew_lease(self.run_id, self.token)


_LOCK = threading.Lock()
_HELD: dict[tuple[str, str], tuple[RunLease, int]] = {}
"""Leases this process holds, by (database URL, run id), with their nesting depth."""
