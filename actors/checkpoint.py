"""Checkpoints of feedback variables, so they survive a restart of the graph's state actor.

The state actor is detached and restarted by Ray when its process dies (``max_restarts=-1``),
but a restarted actor starts empty. Feedback values are small (one float per variable), so
the actor writes a snapshot of all of them to a key-value store and reads it back in its
``__init__``.

Storage is behind the :class:`KVStore` seam. :class:`GcsKV` uses Ray's GCS key-value store
through ``ray.experimental.internal_kv`` (an internal API, the one Serve's controller uses for
its own checkpoints); swap it for another store without touching the actor. The checkpoint
survives restarts of the actor (and of the nodes it runs on), **not** the loss of the GCS
itself unless GCS fault tolerance (an external Redis) is configured for the cluster.

Writes are coalesced (:class:`CoalescingCheckpoint`): the first change after a quiet period is
written at once, later changes at most once per ``interval_s`` (default 0.5 s), each write
holding the latest values. A hot variable therefore costs at most two GCS writes per second,
and a restart loses at most the adjustments of the last ``interval_s`` plus one write.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from actors.resilience import RateLimitedLog

logger = logging.getLogger("modelweave.state")

#: Namespace of modelweave's keys in the GCS key-value store.
KV_NAMESPACE = "modelweave"
#: Longest time between a feedback change and its checkpoint write (seconds).
DEFAULT_INTERVAL_S = 0.5
_FORMAT = 1


class KVStore(Protocol):
    """A small durable key-value store."""

    def get(self, key: str) -> bytes | None:
        """The stored value, or ``None`` when absent."""
        ...

    def put(self, key: str, value: bytes) -> None:
        """Stores ``value`` under ``key`` (overwriting)."""
        ...


class GcsKV:
    """:class:`KVStore` over Ray's GCS key-value store (works in any Ray worker or driver).

    Args:
        namespace: KV namespace, so modelweave's keys cannot collide with Ray's own.
    """

    def __init__(self, namespace: str = KV_NAMESPACE) -> None:
        self._namespace = namespace

    def get(self, key: str) -> bytes | None:
        """The stored value, or ``None`` when absent."""
        from ray.experimental.internal_kv import _internal_kv_get  # Ray only where the store is used

        value: bytes | None = _internal_kv_get(key, namespace=self._namespace)
        return value

    def put(self, key: str, value: bytes) -> None:
        """Stores ``value`` under ``key`` (overwriting)."""
        from ray.experimental.internal_kv import _internal_kv_put

        _internal_kv_put(key, value, overwrite=True, namespace=self._namespace)


class CoalescingCheckpoint:
    """Coalesced snapshots of feedback values in a :class:`KVStore` (not thread-safe).

    The owner calls :meth:`changed` after every change; when it returns a delay, the owner
    schedules :meth:`flush` after that delay (``loop.call_later``). At most one flush is
    scheduled at a time, so any number of changes between two flushes cost one write.

    Args:
        store: Where snapshots go.
        key: Key of this graph version's snapshot (graph name + version hash).
        interval_s: Minimum time between two writes.
        clock: Monotonic clock (tests pass a fake).
    """

    def __init__(self, store: KVStore, key: str, *, interval_s: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.key = key
        self.interval_s = interval_s
        self.writes = 0
        self._store = store
        self._clock = clock
        self._dirty = False
        self._scheduled = False
        self._last_write = float("-inf")
        self._failure_log = RateLimitedLog(logger)  # a GCS outage must not log twice a second

    def load(self) -> dict[str, float]:
        """The last snapshot, or ``{}`` when there is none or it cannot be read."""
        try:
            raw = self._store.get(self.key)
            if raw is None:
                return {}
            data = json.loads(raw)
            return {str(k): float(v) for k, v in data["values"].items()}
        except Exception as exc:  # a bad or unreachable checkpoint must not stop the actor
            logger.warning("feedback checkpoint %s unreadable (%s: %s); starting from initial values",
                           self.key, type(exc).__name__, exc)
            return {}

    def changed(self) -> float | None:
        """Records a change; returns the delay after which to call :meth:`flush`, or ``None``
        when a flush is already scheduled."""
        self._dirty = True
        if self._scheduled:
            return None
        self._scheduled = True
        return max(0.0, self._last_write + self.interval_s - self._clock())

    def flush(self, values: Mapping[str, float]) -> float | None:
        """Writes ``values`` if anything changed since the last write.

        Returns:
            ``None``, or the delay after which to call it again (the write failed; the
            values stay dirty and are retried, so an outage of the store loses nothing
            that is still in the actor's memory).
        """
        self._scheduled = False
        if not self._dirty:
            return None
        self._dirty = False
        payload = json.dumps({"format": _FORMAT, "values": dict(values)}, sort_keys=True).encode()
        try:
            self._store.put(self.key, payload)
        except Exception as exc:
            self._failure_log.warning("feedback checkpoint %s not written (%s: %s); retrying every %.1f s",
                                      self.key, type(exc).__name__, exc, self.interval_s)
            self._dirty = True
            self._scheduled = True
            return self.interval_s
        self.writes += 1
        self._last_write = self._clock()
        return None
