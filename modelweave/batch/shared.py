"""The job's shared state: one actor holding the cache nodes' caches, the feedback variables
and the job's counters, plus the executor-side backends that talk to it in batches.

The actor extends the online graph state actor (:class:`actors.shared_state.GraphStateStore`)
with batch methods. The backends implement the executor's ``CacheBackend`` and
``StateStore`` protocols for one graph stage: cache lookups try a stage-local copy, then
the actor, coalescing the many concurrent rows of a stage into one call per step; stores
and feedback adjustments are applied locally at once and sent when the Ray Data batch
ends. Feedback deltas are applied one by one on the actor, clamped after each, exactly as
per-request adjustments are.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Hashable, Iterable
from typing import Any, cast

from actors.resilience import NearCache
from actors.shared_state import GraphStateStore
from modelweave.batch.coalesce import Coalescer
from modelweave.spec import AdaptiveValue, CacheNode
from modelweave.state import MemoryState

#: Size bound of a stage's local copy of one cache node.
LOCAL_CACHE_ENTRIES = 4096


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
        self._stages: set[str] = set()

    def cache_get_many(self, path: str, keys: list[str]) -> list[bytes | None]:
        """Cached values (or None) for several keys of one cache node."""
        return [self.cache_get(path, k) for k in keys]

    def cache_put_many(self, path: str, items: list[tuple[str, bytes]]) -> list[None]:
        """Stores several values of one cache node."""
        for key, value in items:
            self.cache_put(path, key, value)
        return [None] * len(items)

    def record(self, counts: dict[str, Any]) -> None:
        """Adds one Ray Data batch's counters (``stage``: the reporting stage's id, if any)."""
        now = time.time()
        stage = str(counts.get("stage", ""))
        if self._first is None or stage not in self._stages:
            # Steady state starts once every stage has finished a batch: until then some stage is
            # still loading, and counting another stage's rows against that time overstated the
            # rate (four triage stages: 246 "steady" rows/s, 1.4x what the models' CPU allows).
            self._stages.add(stage)
            self._first, self._first_rows = now, self._rows + counts["rows"]
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
        if kind == "state":
            value = await self.actor.get_state.remote(items[0])
            return [value] * len(items)
        raise ValueError(f"unknown shared-state operation {kind!r}")


class BatchedCache:
    """``CacheBackend`` of one cache node over the job's state actor, with a stage-local copy.

    Lookups try the stage's own copy first (bounded LRU with the node's TTL): in a batch
    job a key seen before in this stage costs no round trip. Misses go to the job's actor
    (coalesced across rows), so stages still share what each computed. Stores land in the
    local copy at once and reach the actor together, in one call when the Ray Data batch
    ends (:meth:`drain`): a row's store costs no task and no round trip of its own, and
    other stages see the values from their next lookup after that.

    Args:
        client: The stage's shared-state client.
        path: Graph path of the cache node.
        node: The cache node (TTL and size bound).
        local_entries: Size bound of the stage-local copy.
    """

    def __init__(self, client: SharedStateClient, path: str, node: CacheNode, *,
                 local_entries: int = LOCAL_CACHE_ENTRIES) -> None:
        self._client = client
        self._path = path
        self._configured: Any = client.actor.configure_cache.remote(path, node.ttl_s, node.max_entries)
        self.local = NearCache(node.ttl_s, min(node.max_entries, local_entries))
        self._puts: list[tuple[str, bytes]] = []

    async def get(self, key: str) -> bytes | None:
        value = self.local.get(key)
        if value is not None:
            return value
        await self._ensure_configured()
        value = await self._client.submit(("get", self._path), key)
        if value is not None:
            self.local.put(key, value)
        return value

    async def put(self, key: str, value: bytes) -> None:
        self.local.put(key, value)
        self._puts.append((key, value))

    async def drain(self) -> None:
        """Sends this batch's stores to the actor in one call and waits for it."""
        if self._puts:
            items, self._puts = self._puts, []
            await self._ensure_configured()
            await self._client.actor.cache_put_many.remote(self._path, items)

    async def _ensure_configured(self) -> None:
        if self._configured is not None:  # await the ObjectRef once, not on every call
            await self._configured
            self._configured = None


class BatchedState:
    """``StateStore`` of one graph stage: the job's feedback values, mirrored per Ray Data batch.

    A stage reads each shared value once per Ray Data batch (the first row that needs it;
    concurrent rows wait for that one read), applies its rows' adjustments to its copy at
    once, clamped after each exactly as the actor does, and sends them, in order, in one
    call per variable when the batch ends (:meth:`drain`). With one graph stage the values
    rows see are the ones per-row round trips gave; with several, a stage sees the others'
    adjustments from its next batch on (one batch of staleness), where it saw them from its
    next micro-batch before. What it saves: two actor round trips per row step.

    Args:
        client: The stage's shared-state client.
    """

    def __init__(self, client: SharedStateClient) -> None:
        self._client = client
        self._local = MemoryState()
        self._known: dict[str, asyncio.Future[None]] = {}
        self._pending: dict[str, tuple[AdaptiveValue, list[float]]] = {}

    def begin(self) -> None:
        """Starts a Ray Data batch: the next read of each variable asks the actor again."""
        self._known.clear()

    async def prefetch(self, variables: Iterable[AdaptiveValue]) -> None:
        """Reads ``variables`` now, at the start of a batch, so that the batch's rows find them
        read instead of all waiting on the same read (one future per row and variable)."""
        await asyncio.gather(*(self._fetch(var) for var in variables))

    async def get(self, var: AdaptiveValue) -> float:
        await self._fetch(var)
        return self._local.values.get(var.state, var.initial)

    async def adjust(self, var: AdaptiveValue, delta: float) -> float:
        await self._fetch(var)
        self._pending.setdefault(var.state, (var, []))[1].append(delta)
        return self._local.adjust_now(var, delta)

    async def _fetch(self, var: AdaptiveValue) -> None:
        known = self._known.get(var.state)
        if known is not None and known.done() and not known.cancelled() and known.exception() is None:
            return  # read in this batch already
        if known is None:
            known = self._known[var.state] = asyncio.ensure_future(self._read(var))
        try:
            await asyncio.shield(known)
        except BaseException:
            if self._known.get(var.state) is known and known.done():
                del self._known[var.state]  # a failed read: the next row tries again
            raise

    async def _read(self, var: AdaptiveValue) -> None:
        value = await self._client.submit(("state", var.state), var.model_dump())
        if var.state not in self._pending:  # adjustments made meanwhile already moved the copy on
            self._local.values[var.state] = float(value)

    async def drain(self) -> None:
        """Sends this batch's adjustments; the copy takes the actor's resulting values."""
        pending, self._pending = self._pending, {}
        for var, deltas in pending.values():
            values: list[float] = await self._client.actor.adjust_state_many.remote(var.model_dump(), deltas)
            if values and var.state not in self._pending:
                self._local.values[var.state] = float(values[-1])
