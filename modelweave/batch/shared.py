"""The job's shared state: one actor holding the cache nodes' caches, the feedback variables
and the job's counters, plus the executor-side backends that talk to it in batches.

The actor extends the online graph state actor (:class:`actors.shared_state.GraphStateStore`)
with batch methods. The backends implement the executor's ``CacheBackend`` and
``StateStore`` protocols, coalescing the many concurrent rows of a graph stage into one
actor call per step, so a batch of rows costs one round trip, not one per row.
Feedback deltas are applied one by one on the actor, clamped after each, exactly as
per-request adjustments are.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Hashable
from typing import Any, cast

from actors.shared_state import GraphStateStore
from modelweave.batch.coalesce import Coalescer
from modelweave.spec import AdaptiveValue, CacheNode


class JobState(GraphStateStore):
    """Actor body: shared caches and feedback variables of one job, plus row counters."""

    def __init__(self) -> None:
        super().__init__()
        self._rows = 0
        self._failures = 0
        self._cache_hits = 0
        self._routes: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._first: float | None = None
        self._first_rows = 0
        self._last: float | None = None

    def cache_get_many(self, path: str, keys: list[str]) -> list[bytes | None]:
        """Cached values (or None) for several keys of one cache node."""
        return [self.cache_get(path, k) for k in keys]

    def cache_put_many(self, path: str, items: list[tuple[str, bytes]]) -> list[None]:
        """Stores several values of one cache node."""
        for key, value in items:
            self.cache_put(path, key, value)
        return [None] * len(items)

    def adjust_state_many(self, var: dict[str, Any], deltas: list[float]) -> list[float]:
        """Applies feedback deltas in order (clamped after each); returns the value after each."""
        return [self.adjust_state(var, d) for d in deltas]

    def record(self, counts: dict[str, Any]) -> None:
        """Adds one Ray Data batch's counters."""
        now = time.time()
        if self._first is None:
            self._first, self._first_rows = now, counts["rows"]
        self._last = now
        self._rows += counts["rows"]
        self._failures += counts["failures"]
        self._cache_hits += counts["cache_hits"]
        self._routes.update(counts["routes"])
        self._errors.update(counts["errors"])

    def counters(self) -> dict[str, Any]:
        """Everything recorded so far."""
        steady = None
        if self._first is not None and self._last is not None and self._last > self._first:
            steady = (self._rows - self._first_rows) / (self._last - self._first)
        return {"rows": self._rows, "failures": self._failures, "cache_hits": self._cache_hits,
                "routes": dict(self._routes), "errors": dict(self._errors), "steady_rows_per_s": steady}


class SharedStateClient:
    """Batches a graph stage's cache and feedback calls to the job's state actor.

    Args:
        actor: Handle of the job's :class:`JobState` actor.
        max_batch: Largest batch of one call.
        max_wait_s: Longest time a call waits for company.
    """

    def __init__(self, actor: Any, *, max_batch: int = 256, max_wait_s: float = 0.005) -> None:
        self.actor = actor
        self._batcher: Coalescer[Any, Any] = Coalescer(self._send, max_batch=max_batch, max_wait_s=max_wait_s)

    async def submit(self, key: tuple[str, str], item: Any) -> Any:
        """Queues one operation (``key`` = kind, target)."""
        return await self._batcher.submit(key, item)

    async def _send(self, key: Hashable, items: list[Any]) -> list[Any]:
        kind, target = cast(tuple[str, str], key)
        if kind == "get":
            values: list[Any] = await self.actor.cache_get_many.remote(target, items)
            return values
        if kind == "put":
            stored: list[Any] = await self.actor.cache_put_many.remote(target, items)
            return stored
        if kind == "state":
            value = await self.actor.get_state.remote(items[0])
            return [value] * len(items)
        if kind == "adjust":
            adjusted: list[Any] = await self.actor.adjust_state_many.remote(items[0][0], [d for _, d in items])
            return adjusted
        raise ValueError(f"unknown shared-state operation {kind!r}")


class BatchedCache:
    """``CacheBackend`` of one cache node over the job's state actor.

    Args:
        client: The stage's shared-state client.
        path: Graph path of the cache node.
        node: The cache node (TTL and size bound).
    """

    def __init__(self, client: SharedStateClient, path: str, node: CacheNode) -> None:
        self._client = client
        self._path = path
        self._configured: Any = client.actor.configure_cache.remote(path, node.ttl_s, node.max_entries)

    async def get(self, key: str) -> bytes | None:
        if self._configured is not None:  # await the ObjectRef once, not on every lookup
            await self._configured
            self._configured = None
        value: bytes | None = await self._client.submit(("get", self._path), key)
        return value

    async def put(self, key: str, value: bytes) -> None:
        await self._client.submit(("put", self._path), (key, value))


class BatchedState:
    """``StateStore`` over the job's state actor.

    Args:
        client: The stage's shared-state client.
    """

    def __init__(self, client: SharedStateClient) -> None:
        self._client = client

    async def get(self, var: AdaptiveValue) -> float:
        value: float = await self._client.submit(("state", var.state), var.model_dump())
        return value

    async def adjust(self, var: AdaptiveValue, delta: float) -> float:
        value: float = await self._client.submit(("adjust", var.state), (var.model_dump(), delta))
        return value
