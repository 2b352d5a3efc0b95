"""Long-lived Ray actors shared by every ingress replica of a graph.

One actor per graph (and graph version) holds the result caches of its cache nodes
and its feedback variables, so a cache hit or a recalibrated threshold seen by one
replica is seen by all. The executor only sees the ``CacheBackend`` / ``StateStore``
protocols from :mod:`modelweave.state`; :mod:`actors.backends` adapts them to the actor
(timeouts, near cache, degraded answers when the actor is down).

The actor survives its own death: Ray restarts it (``max_restarts=-1``), caches are
re-created on first use (every cache call carries the node's TTL and size bound, so the
restarted actor needs no configuration step) and feedback values are restored from a
coalesced checkpoint in Ray's GCS key-value store (:mod:`actors.checkpoint`). Cache
*contents* are not checkpointed: they are a performance aid and refill with traffic.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from actors.backends import ActorCache, ActorState, StateLink
from actors.checkpoint import DEFAULT_INTERVAL_S, CoalescingCheckpoint, GcsKV, KVStore
from actors.key_index import KeyLog
from modelweave.semantic_cache import SemanticIndex, SemanticLookup
from modelweave.spec import AdaptiveValue, GraphSpec, dump_graph
from modelweave.state import MemoryCache, MemoryState

__all__ = ["ActorCache", "ActorState", "GraphState", "GraphStateStore", "StateLink", "actor_name",
           "get_state_actor"]

NAMESPACE = "modelweave"

#: A cache node's (ttl_s, max_entries), sent with cache calls so a fresh actor can create it.
CacheSpec = tuple[float, int] | list[float] | None
#: A semantic cache node's (ttl_s, max_entries, threshold, guard), sent likewise.
SemanticSpec = tuple[float, int, float, bool] | list[Any]
#: Semantic lookups over indexes larger than this run in a worker thread (numpy releases the
#: GIL in the matrix product), so a 50k-entry scan does not stall the other state calls.
SEMANTIC_THREAD_MIN_ENTRIES = 4096
#: Methods a replica's coalesced ``apply_batch`` call may carry: the request path's reads and
#: writes, but not the semantic lookup, whose large scans would hold up the ops behind them.
BATCH_METHODS = frozenset({"cache_get", "cache_put", "cache_keys_since", "semantic_store", "get_state",
                           "adjust_state_many"})


class GraphStateStore:
    """Per-node caches and feedback variables of one graph version (synchronous, not thread-safe).

    Used directly by single-threaded actors (the batch job's state actor) and wrapped by
    :class:`GraphState` for the online actor.
    """

    def __init__(self) -> None:
        self._caches: dict[str, MemoryCache] = {}
        self._key_logs: dict[str, KeyLog] = {}  # the keys each cache stored, for the replicas' mirrors
        self._semantic: dict[str, SemanticIndex] = {}
        self._state = MemoryState()

    def configure_cache(self, path: str, ttl_s: float, max_entries: int) -> None:
        """Creates the cache of one cache node (idempotent)."""
        if path not in self._caches:
            self._create_cache(path, ttl_s, max_entries)

    def _create_cache(self, path: str, ttl_s: float, max_entries: int) -> MemoryCache:
        cache = self._caches[path] = MemoryCache(float(ttl_s), int(max_entries))
        self._key_logs[path] = KeyLog(int(max_entries))
        return cache

    def _cache(self, path: str, spec: CacheSpec) -> MemoryCache:
        cache = self._caches.get(path)
        if cache is None:
            if spec is None:
                raise KeyError(f"cache {path!r} is not configured")
            # Created on first use: after a restart the actor has no caches until asked.
            ttl_s, max_entries = spec
            cache = self._create_cache(path, float(ttl_s), int(max_entries))
        return cache

    def cache_get(self, path: str, key: str, spec: CacheSpec = None) -> bytes | None:
        """Cached value or None; ``spec`` = (ttl_s, max_entries) creates a missing cache."""
        return self._cache(path, spec).get_now(key)

    def cache_put(self, path: str, key: str, value: bytes, spec: CacheSpec = None) -> None:
        """Stores a cached value; ``spec`` = (ttl_s, max_entries) creates a missing cache."""
        self._cache(path, spec).put_now(key, value)
        self._key_logs[path].add(key)

    def cache_keys_since(self, path: str, epoch: str | None, seq: int,
                         spec: CacheSpec = None) -> tuple[str, int, list[str]]:
        """The keys a cache node stored after a replica's last pull (see :mod:`actors.key_index`)."""
        self._cache(path, spec)
        return self._key_logs[path].since(epoch, int(seq))

    def _semantic_index(self, path: str, spec: SemanticSpec) -> SemanticIndex:
        index = self._semantic.get(path)
        if index is None:  # created on first use, like the exact caches
            ttl_s, max_entries, threshold, guard = spec
            index = self._semantic[path] = SemanticIndex(float(threshold), float(ttl_s), int(max_entries),
                                                         guard=bool(guard))
        return index

    def semantic_lookup(self, path: str, vector: Any, text: str, spec: SemanticSpec) -> SemanticLookup:
        """Guarded nearest earlier input of a semantic cache node (see :class:`SemanticIndex`)."""
        return self._semantic_index(path, spec).search(vector, text)

    def semantic_store(self, path: str, vector: Any, text: str, value: bytes, spec: SemanticSpec) -> None:
        """Stores an answer in a semantic cache node's index."""
        self._semantic_index(path, spec).store(vector, text, value)

    def get_state(self, var: dict[str, Any]) -> float:
        """Current value of a feedback variable."""
        v = AdaptiveValue.model_validate(var)
        return self._state.values.get(v.state, v.initial)

    def adjust_state(self, var: dict[str, Any], delta: float) -> float:
        """Clamped adjustment of a feedback variable."""
        return self._state.adjust_now(AdaptiveValue.model_validate(var), delta)

    def adjust_state_many(self, var: dict[str, Any], deltas: list[float]) -> list[float]:
        """Applies feedback deltas in order (clamped after each); returns the value after each."""
        value = AdaptiveValue.model_validate(var)
        return [self._state.adjust_now(value, d) for d in deltas]

    def stats(self) -> dict[str, Any]:
        """Cache sizes, hit/miss counts and feedback values (for tests and the CLI)."""
        return {
            "caches": {p: {"size": len(c), "hits": c.hits, "misses": c.misses} for p, c in self._caches.items()},
            "semantic": {p: index.stats() for p, index in self._semantic.items()},
            "state": dict(self._state.values),
        }


class GraphState(GraphStateStore):
    """The online actor body: the store behind ``async`` methods, with checkpointed feedback.

    Async methods make Ray run this as an asyncio actor: up to ``max_concurrency`` calls are
    in flight, but they interleave on one event loop and never run in parallel threads, so
    the store needs no locks.

    Args:
        checkpoint_key: Key of the feedback checkpoint (``None``: no checkpoint). Ray passes
            the same arguments again when it restarts the actor, so the restarted actor
            reads back what its predecessor wrote.
        store: Checkpoint storage (default: Ray's GCS key-value store).
        interval_s: Checkpoint coalescing interval (see :mod:`actors.checkpoint`).
    """

    def __init__(self, checkpoint_key: str | None = None, store: KVStore | None = None,
                 interval_s: float | None = None) -> None:
        super().__init__()
        self._checkpoint: CoalescingCheckpoint | None = None
        if checkpoint_key is not None:
            self._checkpoint = CoalescingCheckpoint(store or GcsKV(), checkpoint_key,
                                                    interval_s=interval_s or DEFAULT_INTERVAL_S)
            self._state.values.update(self._checkpoint.load())

    async def configure_cache(self, path: str, ttl_s: float, max_entries: int) -> None:  # type: ignore[override]
        """Creates the cache of one cache node (idempotent)."""
        super().configure_cache(path, ttl_s, max_entries)

    async def cache_get(self, path: str, key: str, spec: CacheSpec = None) -> bytes | None:  # type: ignore[override]
        """Cached value or None (creates the cache from ``spec`` when missing)."""
        return super().cache_get(path, key, spec)

    async def cache_put(self, path: str, key: str, value: bytes,  # type: ignore[override]
                        spec: CacheSpec = None) -> None:
        """Stores a cached value (creates the cache from ``spec`` when missing)."""
        super().cache_put(path, key, value, spec)

    async def cache_keys_since(self, path: str, epoch: str | None, seq: int,  # type: ignore[override]
                               spec: CacheSpec = None) -> tuple[str, int, list[str]]:
        """The keys a cache node stored after a replica's last pull."""
        return super().cache_keys_since(path, epoch, seq, spec)

    async def semantic_lookup(self, path: str, vector: Any, text: str,  # type: ignore[override]
                              spec: SemanticSpec) -> SemanticLookup:
        """Guarded nearest earlier input; large indexes are scanned in a worker thread."""
        index = self._semantic_index(path, spec)
        if len(index) >= SEMANTIC_THREAD_MIN_ENTRIES:
            return await asyncio.to_thread(index.search, vector, text)
        return index.search(vector, text)

    async def semantic_store(self, path: str, vector: Any, text: str, value: bytes,  # type: ignore[override]
                             spec: SemanticSpec) -> None:
        """Stores an answer in a semantic cache node's index (in a thread past the size above,
        where a concurrent scan may hold the index's lock)."""
        index = self._semantic_index(path, spec)
        if len(index) >= SEMANTIC_THREAD_MIN_ENTRIES:
            await asyncio.to_thread(index.store, vector, text, value)
        else:
            index.store(vector, text, value)

    async def get_state(self, var: dict[str, Any]) -> float:  # type: ignore[override]
        """Current value of a feedback variable."""
        return super().get_state(var)

    async def adjust_state(self, var: dict[str, Any], delta: float) -> float:  # type: ignore[override]
        """Clamped adjustment of a feedback variable (checkpointed, coalesced)."""
        value = super().adjust_state(var, delta)
        self._changed()
        return value

    def _changed(self) -> None:
        if self._checkpoint is not None:
            delay = self._checkpoint.changed()
            if delay is not None:
                asyncio.get_running_loop().call_later(delay, self._flush)

    async def adjust_state_many(self, var: dict[str, Any], deltas: list[float]) -> list[float]:  # type: ignore[override]
        """Deltas of one replica's flush, applied in order (checkpointed, coalesced)."""
        values = super().adjust_state_many(var, deltas)
        self._changed()
        return values

    async def apply_batch(self, ops: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[bool, Any]]:
        """Runs one replica's coalesced state calls in order (see :class:`actors.backends.StateLink`).

        Returns one ``(True, value)`` or ``(False, "ErrorType: message")`` per op: an op that
        raises fails alone, the others still run and answer.
        """
        out: list[tuple[bool, Any]] = []
        for method, args in ops:
            if method not in BATCH_METHODS:
                out.append((False, f"ValueError: {method!r} cannot be batched"))
                continue
            try:
                out.append((True, await getattr(self, method)(*args)))
            except Exception as exc:  # one bad op must not fail the others of the batch
                out.append((False, f"{type(exc).__name__}: {exc}"[:300]))
        return out

    async def stats(self) -> dict[str, Any]:  # type: ignore[override]
        """Cache sizes, hit/miss counts, feedback values and checkpoint writes."""
        out = super().stats()
        out["checkpoint_writes"] = self._checkpoint.writes if self._checkpoint is not None else 0
        return out

    def _flush(self) -> None:
        assert self._checkpoint is not None
        retry = self._checkpoint.flush(self._state.values)
        if retry is not None:
            asyncio.get_running_loop().call_later(retry, self._flush)


def actor_name(spec: GraphSpec) -> str:
    """Name of a graph version's state actor; a changed graph gets a fresh one."""
    digest = hashlib.sha256(json.dumps(dump_graph(spec), sort_keys=True).encode()).hexdigest()[:12]
    return f"graph-state:{spec.name}:{digest}"


def checkpoint_key(spec: GraphSpec) -> str:
    """GCS key of a graph version's feedback checkpoint (graph name + version hash)."""
    return f"feedback/{actor_name(spec)}"


def get_state_actor(spec: GraphSpec) -> Any:
    """Gets or creates the graph's detached state actor (0 CPU: it only holds data)."""
    import ray  # here, so the actor body and backends import without Ray (unit tests)

    remote_cls = ray.remote(GraphState)
    return remote_cls.options(  # type: ignore[attr-defined]
        name=actor_name(spec), namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
        num_cpus=0, max_concurrency=64, max_restarts=-1,
    ).remote(checkpoint_key(spec))
