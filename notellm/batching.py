"""Gather concurrent requests into one batch call (used by the predictor and by the Milvus search).

Each caller awaits :meth:`MicroBatcher.submit` with its items; a background task runs ``fn`` on batches of
them, one batch at a time, in a worker thread, and hands every caller its own slice of the results. The
batching adapts to the load: a request that finds the batcher idle runs at once (with whatever else is
already queued), so a lone caller never waits ``max_wait_s``; requests that arrive while a batch runs are
gathered for the next one, for at most ``max_wait_s`` after that batch ends or until ``max_batch_size``
items wait. An exception in ``fn`` reaches every caller of that batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Pending:
    items: Sequence[Any]
    future: asyncio.Future = field(repr=False)
    during_batch: bool = False  # queued while a batch was running


class MicroBatcher:
    """Run ``fn(list_of_items) -> list_of_results`` on batches gathered from concurrent callers."""

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], max_batch_size: int = 32,
                 max_wait_s: float = 0.005) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        self._running = False
        self.batches_run = 0

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Queue ``items`` and wait for their results (in the same order)."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._running = False
            self._worker = loop.create_task(self._run())
        pending = _Pending(items, loop.create_future(), self._running)
        await self._queue.put(pending)
        return await pending.future

    async def _collect(self) -> list[_Pending]:
        """The next batch: what is queued now, and after a busy spell what comes within ``max_wait_s``."""
        assert self._queue is not None
        batch = [await self._queue.get()]
        size = len(batch[0].items)
        while size < self.max_batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
            size += len(batch[-1].items)
        if not any(p.during_batch for p in batch):  # the batcher was idle: nobody else to wait for
            return batch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while size < self.max_batch_size:
            timeout = deadline - loop.time()
            if timeout <= 0:
                break
            try:
                nxt = await asyncio.wait_for(self._queue.get(), timeout)
            except asyncio.TimeoutError:
                break
            batch.append(nxt)
            size += len(nxt.items)
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            flat = [item for pending in batch for item in pending.items]
            self._running = True
            try:
                results = await asyncio.to_thread(self.fn, flat)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            finally:
                self._running = False
            self.batches_run += 1
            start = 0
            for pending in batch:
                end = start + len(pending.items)
                if not pending.future.done():
                    pending.future.set_result(list(results[start:end]))
                start = end
