"""Seams for state shared across requests: the result cache and feedback variables.

The executor talks to these protocols only. In-process implementations live here
(unit tests, single-process batch); Ray actor-backed ones live in ``actors/`` so that
every ingress replica shares them. Those degrade instead of raising when the shared store
is slow or down (a cache miss, the last known feedback value; see ``actors/backends.py``),
so a state outage never fails or stalls a request; the executor still treats an exception
from any backend the same way.
"""

from __future__ import annotations

import hashlib
import time
from typing import Protocol

from cachetools import TTLCache

from modelweave.spec_base import AdaptiveValue


class CacheBackend(Protocol):
    """Key/value store with TTL and a size bound for one cache node."""

    async def get(self, key: str) -> bytes | None:
        """Returns the cached value or ``None``."""
        ...

    async def put(self, key: str, value: bytes) -> None:
        """Stores a value (evicting the oldest entries past the size bound)."""
        ...


class StateStore(Protocol):
    """Bounded numeric feedback variables that later stages adjust across requests."""

    async def get(self, var: AdaptiveValue) -> float:
        """Current value of ``var`` (its ``initial`` until first adjusted)."""
        ...

    async def adjust(self, var: AdaptiveValue, delta: float) -> float:
        """Adds ``delta`` to ``var`` clamped to ``[min, max]``; returns the new value."""
        ...


class MemoryCache:
    """In-process TTL + LRU cache (also the storage inside the cache actor)."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self._data: TTLCache[str, bytes] = TTLCache(maxsize=max_entries, ttl=ttl_s, timer=time.monotonic)
        self.hits = 0
        self.misses = 0

    def get_now(self, key: str) -> bytes | None:
        """Synchronous lookup that also counts hits and misses."""
        value = self._data.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put_now(self, key: str, value: bytes) -> None:
        """Synchronous store."""
        self._data[key] = value

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, key: str) -> bytes | None:
        return self.get_now(key)

    async def put(self, key: str, value: bytes) -> None:
        self.put_now(key, value)


class MemoryState:
    """In-process feedback state."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def adjust_now(self, var: AdaptiveValue, delta: float) -> float:
        """Synchronous clamped adjustment."""
        value = self.values[var.state] = clamped(var, self.values.get(var.state, var.initial) + delta)
        return value

    async def get(self, var: AdaptiveValue) -> float:
        return self.values.get(var.state, var.initial)

    async def adjust(self, var: AdaptiveValue, delta: float) -> float:
        return self.adjust_now(var, delta)


def clamped(var: AdaptiveValue, value: float) -> float:
    """``value`` within the feedback variable's bounds: every store clamps after each delta."""
    return min(var.max, max(var.min, value))


def cache_key(graph: str, path: str, payload: bytes) -> str:
    """Stable cache key for a node's input payload."""
    digest = hashlib.sha256()
    for piece in (graph.encode(), b"\0", path.encode(), b"\0", payload):
        digest.update(piece)
    return digest.hexdigest()
