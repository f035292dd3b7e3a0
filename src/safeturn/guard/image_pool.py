"""A bounded pool for image analysis, and the per-request batch that can give up on it.

OCR is the moderator's costliest step (a quarter of a second per new image on one core), and
a client picks how many images it sends and how large they are. So new images are analysed in
a small fixed pool of worker threads with a bounded number of pending jobs, and each screening
holds an `ImageBatch`: its jobs, a deadline and a cancel flag. When the deadline passes or the
request ends, the batch is cancelled: queued jobs never start, a running job stops at its next
checkpoint (before OCR, before the nudity detector), and nothing half-done is cached. The
moderator then reads the dialogue with those images unread and says so.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class ImagePool:
    """A fixed number of worker threads and a cap on jobs queued or running.

    Args:
        workers: Threads analysing images at once.
        max_pending: Jobs accepted at once (queued or running); beyond it `submit` refuses,
            so a burst of image-heavy requests cannot queue unbounded work.
    """

    def __init__(self, workers: int = 2, max_pending: int = 64) -> None:
        if workers < 1 or max_pending < 1:
            raise ValueError(
                f"need workers >= 1 and max_pending >= 1; got {workers}, {max_pending}"
            )
        self.workers = workers
        self.max_pending = max_pending
        self._executor: ThreadPoolExecutor | None = None
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Jobs queued or running now."""
        return self._pending

    def submit(self, job: Callable[[], T]) -> Future[T] | None:
        """Queue `job`; None when `max_pending` jobs are already queued or running."""
        with self._lock:
            if self._pending >= self.max_pending:
                return None
            if self._executor is None:  # created on first use, again after `close`
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="images")
            self._pending += 1
            future = self._executor.submit(job)
        future.add_done_callback(self._done)
        return future

    def close(self) -> None:
        """Drop queued jobs and let running ones finish on their own (their batch is gone)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def _done(self, _future: Future[T]) -> None:
        with self._lock:
            self._pending -= 1


class ImageBatch(Generic[T]):
    """One screening's image jobs, keyed by image digest, with a deadline and a cancel flag.

    Args:
        deadline_s: Seconds from now after which `wait` gives up; None waits as long as the
            jobs take (evaluation, where every image must be read).
    """

    def __init__(self, deadline_s: float | None) -> None:
        self.deadline_s = deadline_s
        self._deadline = None if deadline_s is None else time.monotonic() + deadline_s
        self._cancelled = threading.Event()
        self.reason: str | None = None
        """Why the batch was cancelled: `deadline` or `cancelled` (the request ended)."""
        self.jobs: dict[str, Future[T | None]] = {}
        self.found: dict[str, T] = {}
        """Results already cached when the batch was planned (kept: a cache may evict them)."""
        self.refused: set[str] = set()
        """Images the pool had no room for."""
        self.unscreened: set[str] = set()
        """Images the reading had to treat as unread; filled while the dialogue is read."""

    @property
    def cancelled(self) -> bool:
        """True once the batch gave up: jobs check it between steps."""
        return self._cancelled.is_set()

    def cancel(self, reason: str) -> None:
        """Give up: queued jobs are dropped, running ones stop at their next checkpoint."""
        if not self._cancelled.is_set():
            self.reason = reason
            self._cancelled.set()
        for job in list(self.jobs.values()):  # a copy: `submit` may still be adding jobs
            job.cancel()  # only effective on jobs that have not started

    def result(self, digest: str) -> T | None:
        """The finished result for `digest`, or None when it was not (or not yet) produced.

        Raises:
            Exception: Whatever the job raised (an `ImageError` names the image).
        """
        if digest in self.found:
            return self.found[digest]
        job = self.jobs.get(digest)
        if job is None or not job.done() or job.cancelled():
            return None
        return job.result()

    def why_unscreened(self) -> str:
        """A short, content-free reason for the unscreened images."""
        if self.refused and not self.reason:
            return "image pool busy"
        if self.reason == "deadline":
            return f"image deadline of {self.deadline_s:g}s passed"
        return self.reason or "not analysed"

    async def wait(self) -> None:
        """Wait until every job is done or the deadline passes (then cancel the rest)."""
        waiting = [asyncio.wrap_future(job) for job in self.jobs.values() if not job.done()]
        if not waiting:
            return
        timeout = None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)
        late = False
        try:
            _done, not_done = await asyncio.wait(waiting, timeout=timeout)
            late = bool(not_done)
        finally:
            for wrapper in waiting:
                if not wrapper.done():
                    wrapper.cancel()  # also cancels its job if it has not started
                elif not wrapper.cancelled():
                    wrapper.exception()  # mark it retrieved; `result` re-raises it for the reader
        if late:
            self.cancel("deadline")
