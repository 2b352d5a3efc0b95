"""Pure building blocks that keep a graph serving while its state actor is slow or gone.

No Ray here: :mod:`actors.backends` combines these into the executor's cache and state
backends, and unit tests drive them with fake clocks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cachetools import TTLCache

#: The per-replica near cache keeps entries at most this long ...
NEAR_TTL_MAX_S = 5.0
#: ... and at most this fraction of the cache node's own TTL.
NEAR_TTL_FRACTION = 0.1
#: Size bound of one cache node's near cache in one replica.
NEAR_MAX_ENTRIES = 1024


def near_ttl(ttl_s: float) -> float:
    """Near-cache TTL for a cache node with TTL ``ttl_s``: ``min(5 s, ttl_s / 10)``."""
    return min(NEAR_TTL_MAX_S, ttl_s * NEAR_TTL_FRACTION)


class NearCache:
    """Small per-replica TTL + LRU cache in front of the shared cache actor.

    Staleness trade-off: an entry is served from here for up to its (short) TTL even if the
    shared cache has since expired or evicted it, or lost it in a restart. Cached values are
    results for an exact input key, so that only extends an entry's life by at most
    ``near_ttl``; it never serves another key's value.

    Args:
        ttl_s: How long an entry is served locally.
        max_entries: Size bound (least recently used entries go first).
        clock: Monotonic clock (tests pass a fake).
    """

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: TTLCache[str, bytes] | None = (
            TTLCache(maxsize=max_entries, ttl=ttl_s, timer=clock) if ttl_s > 0 and max_entries > 0 else None
        )

    def get(self, key: str) -> bytes | None:
        """The locally cached value, or ``None``."""
        return self._data.get(key) if self._data is not None else None

    def put(self, key: str, value: bytes) -> None:
        """Remembers a value for the near-cache TTL."""
        if self._data is not None:
            self._data[key] = value

    def __len__(self) -> int:
        return len(self._data) if self._data is not None else 0


class Breaker:
    """Circuit breaker: after a failure, calls are skipped for ``retry_after_s``, then one
    probe call is let through; its success closes the breaker, its failure re-opens it.

    This is what keeps an unreachable state actor from costing every request a timeout:
    only one probe per ``retry_after_s`` waits; the others answer degraded at once.

    Args:
        retry_after_s: How long calls are skipped after a failure.
        clock: Monotonic clock (tests pass a fake).
    """

    def __init__(self, retry_after_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._tripped = False
        self._open_until = 0.0
        self._probing = False

    @property
    def tripped(self) -> bool:
        """Whether the last call outcome was a failure."""
        return self._tripped

    def allow(self) -> bool:
        """Whether a call may go out now (claims the probe slot when half-open)."""
        if not self._tripped:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        """A call answered: close."""
        self._tripped = False
        self._probing = False

    def failure(self) -> None:
        """A call failed or timed out: (re-)open."""
        self._tripped = True
        self._probing = False
        self._open_until = self._clock() + self.retry_after_s

    def release(self) -> None:
        """A call ended without an outcome (cancelled): free the probe slot."""
        self._probing = False


class RateLimitedLog:
    """At most one log line per ``interval_s``; the next line says how many were suppressed.

    Args:
        logger: Where lines go.
        interval_s: Minimum time between two lines.
        clock: Monotonic clock (tests pass a fake).
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._last = float("-inf")
        self.suppressed = 0

    def warning(self, msg: str, *args: object) -> bool:
        """Logs ``msg % args`` (no stack trace) unless a line went out within ``interval_s``."""
        now = self._clock()
        if now - self._last < self.interval_s:
            self.suppressed += 1
            return False
        if self.suppressed:
            msg += " [%d similar message(s) suppressed in the last %.0f s]"
            args = (*args, self.suppressed, self.interval_s)
        self._logger.warning(msg, *args)
        self._last = now
        self.suppressed = 0
        return True
