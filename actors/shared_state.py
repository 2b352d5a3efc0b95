"""Long-lived Ray actors shared by every ingress replica of a graph.

One actor per graph (and graph version) holds the result caches of its cache nodes
and its feedback variables, so a cache hit or a recalibrated threshold seen by one
replica is seen by all. The executor only sees the ``CacheBackend`` / ``StateStore``
protocols from :mod:`modelweave.state`; these classes adapt them to the actor.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import ray

from modelweave.spec import AdaptiveValue, CacheNode, GraphSpec, dump_graph
from modelweave.state import MemoryCache, MemoryState

NAMESPACE = "modelweave"


class GraphStateStore:
    """Per-node caches and feedback variables of one graph version (synchronous, not thread-safe).

    Used directly by single-threaded actors (the batch job's state actor) and wrapped by
    :class:`GraphState` for the online actor.
    """

    def __init__(self) -> None:
        self._caches: dict[str, MemoryCache] = {}
        self._state = MemoryState()

    def configure_cache(self, path: str, ttl_s: float, max_entries: int) -> None:
        """Creates the cache of one cache node (idempotent)."""
        if path not in self._caches:
            self._caches[path] = MemoryCache(ttl_s, max_entries)

    def cache_get(self, path: str, key: str) -> bytes | None:
        """Cached value or None."""
        return self._caches[path].get_now(key)

    def cache_put(self, path: str, key: str, value: bytes) -> None:
        """Stores a cached value."""
        self._caches[path].put_now(key, value)

    def get_state(self, var: dict[str, Any]) -> float:
        """Current value of a feedback variable."""
        v = AdaptiveValue.model_validate(var)
        return self._state.values.get(v.state, v.initial)

    def adjust_state(self, var: dict[str, Any], delta: float) -> float:
        """Clamped adjustment of a feedback variable."""
        return self._state.adjust_now(AdaptiveValue.model_validate(var), delta)

    def stats(self) -> dict[str, Any]:
        """Cache sizes, hit/miss counts and feedback values (for tests and the CLI)."""
        return {
            "caches": {p: {"size": len(c), "hits": c.hits, "misses": c.misses} for p, c in self._caches.items()},
            "state": dict(self._state.values),
        }


class GraphState(GraphStateStore):
    """The online actor body: the store behind ``async`` methods.

    Async methods make Ray run this as an asyncio actor: up to ``max_concurrency`` calls are
    in flight, but they interleave on one event loop and never run in parallel threads, so
    the store needs no locks.
    """

    async def configure_cache(self, path: str, ttl_s: float, max_entries: int) -> None:  # type: ignore[override]
        """Creates the cache of one cache node (idempotent)."""
        super().configure_cache(path, ttl_s, max_entries)

    async def cache_get(self, path: str, key: str) -> bytes | None:  # type: ignore[override]
        """Cached value or None."""
        return super().cache_get(path, key)

    async def cache_put(self, path: str, key: str, value: bytes) -> None:  # type: ignore[override]
        """Stores a cached value."""
        super().cache_put(path, key, value)

    async def get_state(self, var: dict[str, Any]) -> float:  # type: ignore[override]
        """Current value of a feedback variable."""
        return super().get_state(var)

    async def adjust_state(self, var: dict[str, Any], delta: float) -> float:  # type: ignore[override]
        """Clamped adjustment of a feedback variable."""
        return super().adjust_state(var, delta)

    async def stats(self) -> dict[str, Any]:  # type: ignore[override]
        """Cache sizes, hit/miss counts and feedback values."""
        return super().stats()


def actor_name(spec: GraphSpec) -> str:
    """Name of a graph version's state actor; a changed graph gets a fresh one."""
    digest = hashlib.sha256(json.dumps(dump_graph(spec), sort_keys=True).encode()).hexdigest()[:12]
    return f"graph-state:{spec.name}:{digest}"


def get_state_actor(spec: GraphSpec) -> Any:
    """Gets or creates the graph's detached state actor (0 CPU: it only holds data)."""
    remote_cls = ray.remote(GraphState)
    return remote_cls.options(  # type: ignore[attr-defined]
        name=actor_name(spec), namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
        num_cpus=0, max_concurrency=64, max_restarts=-1,
    ).remote()


class ActorCache:
    """``CacheBackend`` over the graph state actor."""

    def __init__(self, actor: Any, path: str, node: CacheNode) -> None:
        self._actor = actor
        self._path = path
        self._configured = actor.configure_cache.remote(path, node.ttl_s, node.max_entries)

    async def get(self, key: str) -> bytes | None:
        await self._configured
        result: bytes | None = await self._actor.cache_get.remote(self._path, key)
        return result

    async def put(self, key: str, value: bytes) -> None:
        await self._actor.cache_put.remote(self._path, key, value)


class ActorState:
    """``StateStore`` over the graph state actor."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    async def get(self, var: AdaptiveValue) -> float:
        value: float = await self._actor.get_state.remote(var.model_dump())
        return value

    async def adjust(self, var: AdaptiveValue, delta: float) -> float:
        value: float = await self._actor.adjust_state.remote(var.model_dump(), delta)
        return value
