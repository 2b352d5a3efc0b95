"""Micro-batching of concurrent awaits: many rows' calls become one remote call.

A graph stage runs a whole Ray Data batch of rows concurrently. At each step most
rows want the same thing at about the same time (the same model, the same cache, the
same feedback variable). :class:`Coalescer` queues those requests per key and sends
each key's queue as one call when it reaches its size limit, when the event loop goes
idle (every row that was ready has queued), or after ``max_wait_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: ``send(key, items)`` -> one result (or exception instance) per item, in order.
SendFn = Callable[[Hashable, list[Any]], Awaitable[list[Any]]]


@dataclass
class _Queue(Generic[T, R]):
    items: list[tuple[T, asyncio.Future[R]]] = field(default_factory=list)
    first_at: float = 0.0
    seen: int = 0
    scheduled: bool = False


class Coalescer(Generic[T, R]):
    """Queues ``submit(key, item)`` calls and sends them per key in batches.

    Args:
        send: Coroutine sending one batch for a key; returns a result or an exception
            instance per item (raising fails every item of the batch).
        max_batch: Largest batch per key (a function of the key, or one number).
        max_wait_s: Longest time an item waits for company.
    """

    def __init__(self, send: SendFn, *, max_batch: Callable[[Hashable], int] | int = 64,
                 max_wait_s: float = 0.005) -> None:
        self._send = send
        self._max_batch = max_batch if callable(max_batch) else (lambda _key, n=max_batch: n)
        self.max_wait_s = max_wait_s
        self._queues: dict[Hashable, _Queue[T, R]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, key: Hashable, item: T) -> R:
        """Queues ``item`` under ``key`` and waits for its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        queue = self._queues.setdefault(key, _Queue())
        if not queue.items:
            queue.first_at = time.monotonic()
        queue.items.append((item, future))
        if len(queue.items) >= self._max_batch(key):
            self._flush(key)
        elif not queue.scheduled:
            queue.scheduled = True
            queue.seen = 0
            loop.call_soon(self._tick, key)
        return await future

    def _tick(self, key: Hashable) -> None:
        """Flushes once no item joined during a loop iteration, or the oldest waited too long."""
        queue = self._queues[key]
        if not queue.items:
            queue.scheduled = False
            return
        if len(queue.items) != queue.seen and time.monotonic() - queue.first_at < self.max_wait_s:
            queue.seen = len(queue.items)
            asyncio.get_running_loop().call_soon(self._tick, key)
            return
        queue.scheduled = False
        self._flush(key)

    def _flush(self, key: Hashable) -> None:
        queue = self._queues[key]
        size = self._max_batch(key)
        while queue.items:
            batch, queue.items = queue.items[:size], queue.items[size:]
            task = asyncio.ensure_future(self._run(key, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.first_at = time.monotonic()

    async def _run(self, key: Hashable, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        live = [(item, f) for item, f in batch if not f.done()]  # cancelled: past its deadline
        if not live:
            return
        try:
            results = await self._send(key, [item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch call returned {len(results)} results for {len(live)} items")
        except Exception as exc:
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(live, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
