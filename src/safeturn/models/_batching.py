"""A small async micro-batcher for models that run faster on batches than one by one.

Callers `await batcher.submit(item)` as if they were alone. A worker task takes the first
waiting item, waits a short window for others to arrive, and hands up to `max_batch` of them
to a *synchronous* batch function in a worker thread. Only one batch runs at a time, because the
local models it feeds are not thread-safe. Items with different `key`s (e.g. different sampling
parameters) are never mixed in one call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from safeturn.errors import BatcherClosedError as BatcherClosedError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R] = field(repr=False)


class MicroBatcher(Generic[T, R]):
    """Collects concurrent `submit` calls into batches for a synchronous function.

    Must be created inside a running event loop and used only from that loop.

    Args:
        fn: Maps a list of items to a list of results of the same length and order. It runs
            in a worker thread; an exception it raises is raised to every caller of that batch.
        max_batch: Most items per call of `fn`.
        window_s: How long to wait for more items after the first one arrives.
        key: Items whose keys differ go to separate calls of `fn`.

    Examples:
        >>> async def main() -> list[int]:
        ...     batcher = MicroBatcher(lambda xs: [x * 2 for x in xs], max_batch=4)
        ...     try:
        ...         return list(await asyncio.gather(*(batcher.submit(i) for i in range(3))))
        ...     finally:
        ...         await batcher.aclose()
        >>> asyncio.run(main())
        [0, 2, 4]
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 8,
        window_s: float = 0.01,
        key: Callable[[T], Hashable] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.loop = asyncio.get_running_loop()
        self._fn = fn
        self.max_batch = max_batch
        self.window_s = window_s
        self._key = key
        self._queue: asyncio.Queue[_Pending[T, R] | None] = asyncio.Queue()
        self._closed = False
        self.batches = 0
        """How many calls of `fn` were made (for tests and stats)."""
        self._worker = self.loop.create_task(self._run(), name="safeturn-micro-batcher")

    @property
    def closed(self) -> bool:
        """True once `aclose` was called or the worker stopped."""
        return self._closed or self._worker.done()

    async def submit(self, item: T) -> R:
        """Queue `item` and wait for its result.

        Raises:
            BatcherClosedError: The batcher was closed.
            Exception: Whatever the batch function raised for this item's batch.
        """
        if self.closed:
            raise BatcherClosedError("the micro-batcher is closed")
        future: asyncio.Future[R] = self.loop.create_future()
        self._queue.put_nowait(_Pending(item, future))
        return await future

    async def aclose(self) -> None:
        """Stop accepting items, finish those already submitted, and stop the worker."""
        if self._closed:
            await asyncio.gather(self._worker, return_exceptions=True)
            return
        self._closed = True
        self._queue.put_nowait(None)
        await asyncio.gather(self._worker, return_exceptions=True)

    async def _run(self) -> None:
        stopping = False
        try:
            while not stopping:
                first = await self._queue.get()
                if first is None:
                    break
                batch = [first]
                if self._queue.qsize() < self.max_batch - 1 and self.window_s > 0:
                    await asyncio.sleep(self.window_s)
                while len(batch) < self.max_batch and not self._queue.empty():
                    nxt = self._queue.get_nowait()
                    if nxt is None:
                        stopping = True
                        break
                    batch.append(nxt)
                try:
                    groups = self._groups(batch)
                except Exception as exc:  # a bad key fails this batch's callers, not the worker
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(exc)
                    continue
                for group in groups:
                    await self._call(group)
        except asyncio.CancelledError:
            self._fail_queued(BatcherClosedError("the micro-batcher was cancelled"))
            raise
        except BaseException as exc:  # a bug here must not leave callers hanging
            logger.exception("micro-batcher worker crashed")
            self._fail_queued(BatcherClosedError(f"the micro-batcher worker crashed: {exc!r}"))
            raise
        self._closed = True
        self._fail_queued(BatcherClosedError("the micro-batcher is closed"))

    def _groups(self, batch: list[_Pending[T, R]]) -> list[list[_Pending[T, R]]]:
        live = [p for p in batch if not p.future.done()]  # skip callers that were cancelled
        if self._key is None:
            return [live] if live else []
        groups: dict[Hashable, list[_Pending[T, R]]] = {}
        for pending in live:
            groups.setdefault(self._key(pending.item), []).append(pending)
        return list(groups.values())

    async def _call(self, group: list[_Pending[T, R]]) -> None:
        self.batches += 1
        try:
            results = await asyncio.to_thread(self._fn, [p.item for p in group])
            if len(results) != len(group):
                raise RuntimeError(
                    f"batch function returned {len(results)} results for {len(group)} items"
                )
        except asyncio.CancelledError:
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(BatcherClosedError("batch was cancelled"))
            raise
        except Exception as exc:
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        for pending, result in zip(group, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)

    def _fail_queued(self, exc: BaseException) -> None:
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if pending is not None and not pending.future.done():
                pending.future.set_exception(exc)
