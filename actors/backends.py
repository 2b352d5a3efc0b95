"""The executor's ``CacheBackend`` / ``StateStore`` over the graph state actor, fault-tolerant.

A graph keeps answering when its state actor is slow, restarting or gone: a cache lookup
becomes a miss, a feedback read returns the last value this replica saw (the variable's
``initial`` if it never saw one), and a failed adjustment is dropped. Every degraded call is
counted (``state_errors_total{graph, op, reason}``) and logged at most once per 10 s, without a
stack trace. Behaviour:

* Every call on the request path has a timeout (default 0.5 s, ``MODELWEAVE_STATE_TIMEOUT_S``).
* After a failure a circuit breaker skips the actor for 1 s, then lets one probe through,
  so an outage costs one timeout per second per replica, not one per request.
* Cache writes are fire-and-forget (1 s timeout, at most 256 queued or in flight per replica).
* Calls are coalesced (:class:`StateLink`): writes wait up to 20 ms for a read to carry them, so
  under load a request costs the actor about one call instead of two or three.
* Each cache node has a per-replica near cache (TTL ``min(5 s, ttl_s / 10)``, 1024 entries),
  so repeated keys skip the actor round trip; see :class:`actors.resilience.NearCache`.
* An ingress replica mirrors which keys each exact cache holds (pulled every ``KEY_SYNC_S``), so
  a key nobody stored is a miss without a round trip; see :mod:`actors.key_index`.
* Every cache call carries the node's TTL and size bound, so a restarted actor re-creates a
  cache on first use (no extra round trip, nothing to remember client-side).

The actor handle is duck-typed (``handle.method.remote(*args)`` returning an awaitable), so
this module needs no Ray and unit tests pass a fake.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from actors.key_index import KeyMirror
from actors.resilience import NEAR_MAX_ENTRIES, Breaker, NearCache, RateLimitedLog, near_ttl
from modelweave.errors import InvalidArgument
from modelweave.observe import MetricsSink
from modelweave.semantic_cache import SemanticHit, SemanticLookup, unit_vector, vector_key
from modelweave.spec import AdaptiveValue, CacheNode
from modelweave.state import clamped

logger = logging.getLogger("modelweave.state")

#: Timeout of state calls on the request path (cache read, feedback read and adjustment).
DEFAULT_TIMEOUT_S = float(os.environ.get("MODELWEAVE_STATE_TIMEOUT_S", "0.5"))
#: Timeout of fire-and-forget cache writes (off the request path; bounds their lifetime).
WRITE_TIMEOUT_S = 1.0
#: How long the actor is skipped after a failed call.
RETRY_AFTER_S = 1.0
#: Cache writes in flight per replica beyond which new ones are dropped (and counted).
MAX_PENDING_WRITES = 256
#: How long a feedback adjustment waits for others of its variable before they are queued as one
#: ``adjust_state_many``. 0: queued at once; the link's write delay already gathers them, and
#: deltas made while one is on its way go together next.
FEEDBACK_FLUSH_S = 0.0
#: How long a write (cache store, feedback flush) waits for a read to carry it before it is
#: sent on its own. A state-actor call costs ~0.5 ms of CPU on each side whatever it carries.
WRITE_DELAY_S = 0.02
#: How often an ingress replica pulls the keys its graph's exact caches hold, so a lookup of a key
#: no replica stored costs no round trip (:mod:`actors.key_index`); its writes then wait as long
#: for a pull or a lookup to carry them. ``MODELWEAVE_CACHE_KEY_SYNC_S=0``: no mirror, every
#: lookup the near cache cannot answer asks the actor, and writes wait ``WRITE_DELAY_S``.
KEY_SYNC_S = float(os.environ.get("MODELWEAVE_CACHE_KEY_SYNC_S", "0.25"))
#: Counter of degraded state calls (declared in ``deployments.metrics``).
ERRORS_METRIC = "state_errors_total"


@dataclass
class _Op:
    """One state call waiting to go out in a batch."""

    op: str  # what it counts as in state_errors_total (cache_get, cache_put, state_adjust ...)
    method: str
    args: tuple[Any, ...]
    future: asyncio.Future[tuple[bool, Any]]


class StateLink:
    """One replica's connection to its graph's state actor: timeouts, breaker, reporting.

    Calls are coalesced, because a Ray actor call costs about the same CPU (~0.5 ms on each
    side, measured on 2 cores) whether it carries one operation or ten. A read (:meth:`read`)
    goes out at once and carries every queued write with it, in one ``apply_batch`` call; a
    write (:meth:`write`) waits for such a read at most ``write_delay_s``, then goes on its
    own with the writes queued meanwhile. Under load a request's cache store and the feedback
    deltas ride on the next request's cache lookup, so the actor sees about one call per
    request instead of two or three. The actor runs a batch's operations in order, so a read
    sees the writes queued before it. An actor without ``apply_batch`` (a detached one started
    by an older modelweave) gets one call per operation, as before.

    Args:
        actor: Handle of the graph's state actor.
        graph: Graph name (metric tag, log lines).
        sink: Metrics backend for ``state_errors_total``; ``None`` counts only in ``errors``.
        timeout_s: Timeout of calls on the request path.
        write_timeout_s: Timeout of fire-and-forget writes.
        retry_after_s: Breaker open time after a failure.
        max_pending_writes: Bound on writes queued or in flight.
        write_delay_s: Longest wait of a write for a read to carry it.
        clock: Monotonic clock (tests pass a fake).
    """

    def __init__(self, actor: Any, graph: str, *, sink: MetricsSink | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, write_timeout_s: float = WRITE_TIMEOUT_S,
                 retry_after_s: float = RETRY_AFTER_S, max_pending_writes: int = MAX_PENDING_WRITES,
                 write_delay_s: float = WRITE_DELAY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.actor = actor
        self.graph = graph
        self.timeout_s = timeout_s
        self.write_timeout_s = write_timeout_s
        self.breaker = Breaker(retry_after_s, clock)
        self.log = RateLimitedLog(logger, 10.0, clock)
        self.errors: dict[tuple[str, str], int] = {}  # (op, reason) -> count, for tests and debugging
        self._sink = sink
        self._max_pending = max_pending_writes
        self._pending: set[asyncio.Task[Any]] = set()  # batches and unbatched writes in flight
        self._degraded_since_ok = 0
        self._write_delay = write_delay_s
        self._queued: list[_Op] = []  # writes waiting for a carrier
        self._writes = 0  # writes queued or in flight (bounded by max_pending_writes)
        self._timer: asyncio.TimerHandle | None = None
        self._batching: bool | None = None  # whether the actor has apply_batch

    async def call(self, op: str, method: str, *args: Any, timeout_s: float | None = None) -> tuple[bool, Any]:
        """Calls ``actor.<method>(*args)``; returns ``(True, value)`` or ``(False, None)`` when
        the call was skipped, failed or timed out (already counted and logged)."""
        if not self.breaker.allow():
            self._degraded(op, "unavailable", None)
            return False, None
        try:
            ref = getattr(self.actor, method).remote(*args)
        except Exception as exc:  # the handle itself failed (actor gone for good)
            self.breaker.failure()
            self._degraded(op, "error", exc)
            return False, None
        reason, value = await self._answer_of(ref, timeout_s or self.timeout_s)
        if reason is not None:
            self._degraded(op, reason, value)
            return False, None
        return True, value

    async def _answer_of(self, ref: Any, timeout_s: float) -> tuple[str | None, Any]:
        """Awaits one actor call: ``(None, value)``, or ``(reason, exception or None)`` after a
        timeout or a failure. Updates the breaker; the caller counts the degraded operations."""
        try:
            value = await asyncio.wait_for(_awaitable(ref), timeout_s)
        except TimeoutError:
            self.breaker.failure()
            return "timeout", None
        except asyncio.CancelledError:  # the request went away; no verdict on the actor
            self.breaker.release()
            raise
        except Exception as exc:  # actor died / restarting / unreachable / bad answer
            self.breaker.failure()
            return "error", exc
        self.breaker.success()
        if self._degraded_since_ok:
            self.log.warning("graph %s: state actor answers again (%d state call(s) were degraded)",
                             self.graph, self._degraded_since_ok)
            self._degraded_since_ok = 0
        return None, value

    @property
    def batching(self) -> bool:
        """Whether calls to this actor are coalesced (it has ``apply_batch``)."""
        if self._batching is None:
            self._batching = getattr(self.actor, "apply_batch", None) is not None
        return self._batching

    async def read(self, op: str, method: str, *args: Any) -> tuple[bool, Any]:
        """A call on the request path, sent at once with the queued writes; as :meth:`call`."""
        if not self.batching:
            return await self.call(op, method, *args)
        future: asyncio.Future[tuple[bool, Any]] = asyncio.get_running_loop().create_future()
        self._queued.append(_Op(op, method, args, future))
        self._send_queued(self.timeout_s)
        # Shielded: a cancelled request must not cancel the writes its batch carries.
        return await asyncio.shield(future)

    def write(self, op: str, method: str, *args: Any) -> asyncio.Future[tuple[bool, Any]] | None:
        """Queues a write; it goes with the next read, or on its own after ``write_delay_s``.

        Returns the future of its ``(ok, value)``, which callers may ignore (failures are
        counted when they happen, never raised), or None when too many writes are pending
        (counted as ``overflow``).
        """
        if self._writes >= self._max_pending:
            self._degraded(op, "overflow", None)
            return None
        self._writes += 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[bool, Any]] = loop.create_future()
        future.add_done_callback(self._write_done)
        if not self.batching:
            task = asyncio.ensure_future(self.call(op, method, *args, timeout_s=self.write_timeout_s))
            self._track(task)
            task.add_done_callback(lambda t: future.set_result(t.result() if not t.cancelled() else (False, None)))
            return future
        self._queued.append(_Op(op, method, args, future))
        if self._timer is None:
            self._timer = loop.call_later(self._write_delay, self._send_queued, self.write_timeout_s)
        return future

    async def drain(self) -> None:
        """Sends the queued writes now and waits for every call in flight (tests, shutdown)."""
        self._send_queued(self.write_timeout_s)
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def flush_now(self) -> None:
        """Sends the queued writes at once without waiting for their answers (graceful
        shutdown: the call is on its way before the replica stops). Needs the running event
        loop; without one (interpreter teardown) it does nothing."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._send_queued(self.write_timeout_s)

    def _write_done(self, _future: asyncio.Future[tuple[bool, Any]]) -> None:
        self._writes -= 1

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._pending.add(task)  # strong reference until done, else the task may be collected
        task.add_done_callback(self._pending.discard)

    def _send_queued(self, timeout_s: float) -> None:
        """Sends everything queued (writes, and a read last) in one ``apply_batch`` call."""
        if self._timer is not None:  # what it would have sent goes now
            self._timer.cancel()
            self._timer = None
        if not self._queued:
            return
        ops, self._queued = self._queued, []
        if not self.breaker.allow():
            self._settle(ops, "unavailable", None)
            return
        # Submitted here, not in the task: a lookup must not wait behind whatever the event loop
        # runs next (in triage, the redact branch's Serve call, ~2 ms before it was moved here).
        try:
            ref = self.actor.apply_batch.remote([(o.method, o.args) for o in ops])
        except Exception as exc:  # the handle itself failed (actor gone for good)
            self.breaker.failure()
            self._settle(ops, "error", exc)
            return
        self._track(asyncio.ensure_future(self._answer(ops, ref, timeout_s)))

    async def _answer(self, ops: list[_Op], ref: Any, timeout_s: float) -> None:
        """Waits for one ``apply_batch`` call; resolves every op's future (ok or degraded, counted)."""
        try:
            reason, answers = await self._answer_of(ref, timeout_s)
        except asyncio.CancelledError:  # shutting down: nothing to count
            self._settle(ops, None, None)
            raise
        if reason is not None:
            self._settle(ops, reason, answers)
            return
        for o, (ok, value) in zip(ops, answers, strict=True):
            if not ok:  # the actor answered, but this op raised there
                self._degraded(o.op, "error", RuntimeError(str(value)))
            if not o.future.done():
                o.future.set_result((bool(ok), value if ok else None))

    def _settle(self, ops: list[_Op], reason: str | None, exc: BaseException | None) -> None:
        """Answers ``(False, None)`` to every op; counts each as degraded for ``reason`` if given."""
        for o in ops:
            if reason is not None:
                self._degraded(o.op, reason, exc)
            if not o.future.done():
                o.future.set_result((False, None))

    def _degraded(self, op: str, reason: str, exc: BaseException | None) -> None:
        self.errors[(op, reason)] = self.errors.get((op, reason), 0) + 1
        self._degraded_since_ok += 1
        if self._sink is not None:
            self._sink.inc(ERRORS_METRIC, {"graph": self.graph, "op": op, "reason": reason})
        detail = f"{type(exc).__name__}: {str(exc)[:200]}" if exc is not None else reason
        self.log.warning("graph %s: state actor unavailable (%s %s); serving cache misses and last known "
                         "feedback values", self.graph, op, detail)


async def _awaitable(ref: Any) -> Any:
    # ObjectRefs are awaitable but not coroutines; wrapping keeps wait_for's cancellation simple.
    return await ref


class ActorCache:
    """``CacheBackend`` of one cache node over the state actor, with a per-replica near cache.

    With ``key_sync_s`` the replica also mirrors which keys the actor holds
    (:mod:`actors.key_index`), pulling the keys stored since its last pull at most every
    ``key_sync_s`` (the pull rides on the link like a read, carrying the queued writes): a
    lookup whose key is in neither the near cache nor the mirror is a miss without a round trip.

    Args:
        link: The replica's link to the state actor.
        path: Graph path of the cache node.
        node: The cache node (TTL and size bound).
        clock: Monotonic clock of the near cache (tests pass a fake).
        key_sync_s: Longest time between two pulls of the key mirror; None: no mirror, every
            lookup the near cache cannot answer asks the actor.
    """

    def __init__(self, link: StateLink, path: str, node: CacheNode,
                 clock: Callable[[], float] = time.monotonic, key_sync_s: float | None = None) -> None:
        self._link = link
        self._path = path
        self._spec = (node.ttl_s, node.max_entries)
        self._clock = clock
        self.near = NearCache(near_ttl(node.ttl_s), min(node.max_entries, NEAR_MAX_ENTRIES), clock)
        # A detached actor started by an older modelweave (its name depends on the graph, not on
        # the code version) cannot answer pulls: every lookup then asks it, as before.
        pulls = key_sync_s and getattr(link.actor, "cache_keys_since", None) is not None
        self.mirror = KeyMirror(node.ttl_s, node.max_entries, clock) if pulls else None
        self._sync_every = key_sync_s or 0.0
        self._synced_at = -float("inf")
        self._sync: asyncio.Task[None] | None = None
        self.local_misses = 0  # lookups the mirror answered (no round trip)

    async def get(self, key: str) -> bytes | None:
        """Near cache, then (when the mirror says the actor may have it) the actor; a miss when
        the actor cannot answer."""
        value = self.near.get(key)
        if value is not None:
            return value
        if self.mirror is not None:
            self._pull_keys_when_due()
            if not self.mirror.may_hold(key):
                self.local_misses += 1
                return None
        ok, value = await self._link.read("cache_get", "cache_get", self._path, key, self._spec)
        if not ok or value is None:
            return None
        self.near.put(key, value)
        return value  # type: ignore[no-any-return]

    async def put(self, key: str, value: bytes) -> None:
        """Stores locally at once and in the actor in the background."""
        self.near.put(key, value)
        if self.mirror is not None:
            self.mirror.add(key)
        self._link.write("cache_put", "cache_put", self._path, key, value, self._spec)

    async def keys_pulled(self) -> None:
        """Waits for the key pull in flight, if any (tests, shutdown)."""
        if self._sync is not None:
            await asyncio.shield(self._sync)

    def _pull_keys_when_due(self) -> None:
        now = self._clock()
        if now - self._synced_at < self._sync_every or (self._sync is not None and not self._sync.done()):
            return
        self._synced_at = now
        self._sync = asyncio.ensure_future(self._pull_keys())

    async def _pull_keys(self) -> None:
        assert self.mirror is not None
        ok, answer = await self._link.read("cache_sync", "cache_keys_since", self._path, self.mirror.epoch,
                                           self.mirror.seq, self._spec)
        if ok and isinstance(answer, (tuple, list)) and len(answer) == 3:
            self.mirror.apply(str(answer[0]), int(answer[1]), list(answer[2]))


class ActorSemanticCache:
    """``SemanticCacheBackend`` of one ``key: semantic`` cache node over the shared state actor.

    Same rules as :class:`ActorCache`: the lookup has the link's timeout, an open breaker or a
    failed call is a miss (counted in ``state_errors_total{op="semantic_lookup"}`` and logged),
    stores are fire-and-forget. The per-replica near cache is keyed by the exact text *and*
    vector (:func:`~modelweave.semantic_cache.vector_key`), never by similarity: a near cache
    that matched by similarity would chain approximations (A hits B locally, C hits A, ...)
    beyond what the shared index allows.

    Args:
        link: The replica's link to the state actor.
        path: Graph path of the cache node.
        ttl_s: Entry lifetime. max_entries: Size bound of the shared index.
        threshold: Minimum cosine similarity. guard: Apply :mod:`modelweave.semantic_guard`.
        clock: Monotonic clock of the near cache (tests pass a fake).
    """

    def __init__(self, link: StateLink, path: str, *, ttl_s: float, max_entries: int, threshold: float,
                 guard: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self._link = link
        self._path = path
        self._spec = (ttl_s, max_entries, threshold, guard)
        self.near = NearCache(near_ttl(ttl_s), min(max_entries, NEAR_MAX_ENTRIES), clock)
        self.guard_rejections = 0

    async def lookup(self, vector: Any, text: str) -> SemanticLookup:
        """Near cache (exact text), then the shared index; a miss when the actor cannot answer."""
        near_key = vector_key(vector, text)
        value = self.near.get(near_key)
        if value is not None:
            return SemanticLookup(SemanticHit(value, text, 1.0, 0.0), best_score=1.0)
        v = np.asarray(vector, dtype=np.float32)
        try:
            unit_vector(v)  # the index's own check: an empty, zero or non-finite vector matches nothing
        except InvalidArgument:
            # Not asked of the actor: an actor of an older version refuses it, and the refusal
            # would count as an outage and open the link's breaker for every state call.
            return SemanticLookup()
        ok, found = await self._link.call("semantic_lookup", "semantic_lookup", self._path, v, text, self._spec)
        if not ok or not isinstance(found, SemanticLookup):
            return SemanticLookup()
        if found.hit is not None:
            self.near.put(near_key, found.hit.value)
        elif found.rejected is not None:
            self.guard_rejections += 1
        return found

    async def store(self, vector: Any, text: str, value: bytes) -> None:
        """Stores locally at once (exact text and vector) and in the shared index in the background."""
        self.near.put(vector_key(vector, text), value)
        self._link.write("semantic_store", "semantic_store", self._path, np.asarray(vector, dtype=np.float32),
                        text, value, self._spec)


class ActorState:
    """``StateStore`` over the state actor, with feedback adjustments off the request path.

    Reads ask the actor (the executor already re-reads a value at most every
    ``state_refresh_s``) and fall back to the last value seen when it cannot answer.
    Adjustments are applied to this replica's copy at once, clamped exactly as the actor
    clamps, and sent in the background as ``adjust_state_many`` operations, applied in order
    on the actor, with the link's other writes (so within ``WRITE_DELAY_S``, usually on the
    next cache lookup): a request never waits for a round trip to move a threshold, and
    deltas made while earlier ones are on their way go together next. The copy then takes
    the actor's resulting value, which includes the other replicas' adjustments. Deltas the actor never received
    (down, timed out) are dropped and counted, as before, and the copy forgets them.

    Args:
        link: The replica's link to the state actor.
        flush_delay_s: How long a first delta waits for others before they are queued.
    """

    def __init__(self, link: StateLink, flush_delay_s: float = FEEDBACK_FLUSH_S) -> None:
        self._link = link
        self._delay = flush_delay_s
        self.last: dict[str, float] = {}  # this replica's view: confirmed + deltas on their way
        self._confirmed: dict[str, float] = {}  # the actor's value as last seen
        self._pending: dict[str, tuple[AdaptiveValue, list[float]]] = {}  # not sent yet
        self._inflight: set[str] = set()  # variables with deltas sent, not answered yet
        self._flusher: asyncio.Task[None] | None = None
        self._many: bool | None = None  # whether the actor takes a flush in one call

    async def get(self, var: AdaptiveValue) -> float:
        """The shared value; the last known one (or ``initial``) when the actor cannot answer.

        While this replica's own deltas are on their way, its copy answers: the actor's
        value would not include them yet.
        """
        if var.state in self._pending or var.state in self._inflight:
            return self.last[var.state]
        ok, value = await self._link.read("state_get", "get_state", var.model_dump())
        if ok:
            self._confirmed[var.state] = float(value)
            if var.state in self._pending or var.state in self._inflight:
                return self.last[var.state]  # a delta of ours left meanwhile: the copy has it, the answer not
            self.last[var.state] = float(value)
            return float(value)
        return self.last.get(var.state, var.initial)

    async def adjust(self, var: AdaptiveValue, delta: float) -> float:
        """Moves this replica's copy at once and queues the delta for the actor.

        While the actor is failing (the link's breaker is open) the delta is not queued:
        the call is skipped or probes the actor, as every other state call does, and when
        the actor cannot answer the delta is dropped (counted) and the last known value
        returned, so a replica's thresholds do not drift on their own during an outage.
        """
        if self._link.breaker.tripped:
            ok, answer = await self._link.call("state_adjust", "adjust_state", var.model_dump(), delta)
            if ok:
                self._confirmed[var.state] = self.last[var.state] = float(answer)
            return self.last.get(var.state, var.initial)
        value = clamped(var, self.last.get(var.state, var.initial) + delta)
        self.last[var.state] = value
        self._pending.setdefault(var.state, (var, []))[1].append(delta)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_later())
        return value

    async def drain(self) -> None:
        """Waits until every queued delta has been sent and answered (tests, shutdown)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._delay)
        while self._pending:
            batch, self._pending = self._pending, {}
            await asyncio.gather(*(self._send(var, deltas) for var, deltas in batch.values()))

    async def _send(self, var: AdaptiveValue, deltas: list[float]) -> None:
        self._inflight.add(var.state)
        try:
            if self._many is None:
                # A detached actor started by an older modelweave has no adjust_state_many
                # (its name depends on the graph, not on the code version): one call per delta.
                self._many = getattr(self._link.actor, "adjust_state_many", None) is not None
            if self._many:
                sent = self._link.write("state_adjust", "adjust_state_many", var.model_dump(), deltas)
                values = (await sent)[1] if sent is not None else None
            else:
                values = []
                for delta in deltas:
                    ok, value = await self._link.call("state_adjust", "adjust_state", var.model_dump(), delta)
                    if not ok:
                        break
                    values.append(value)
        finally:
            self._inflight.discard(var.state)
        if isinstance(values, list) and values:  # None when the call failed (already counted)
            self._confirmed[var.state] = float(values[-1])
        # Deltas queued meanwhile are replayed on the actor's answer (or, when the call failed,
        # on the last confirmed value: the sent ones were dropped).
        value = self._confirmed.get(var.state, var.initial)
        for delta in self._pending.get(var.state, (var, []))[1]:
            value = clamped(var, value + delta)
        self.last[var.state] = value

