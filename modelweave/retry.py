"""Retries of model calls whose replica was lost: a budget and jittered backoff.

Only calls that failed with :class:`~modelweave.errors.ReplicaLost` (the replica died or
could not be reached, so the call did not complete) are retried, and only for models
whose adapter declares itself idempotent. Overload (a full queue) is never retried: it
is answered, fast, so the client can back off.

The budget follows Finagle's retry budget: every request deposits ``ratio`` of a retry,
plus a floor of ``min_per_s`` retries per second, so retries add at most ``ratio`` extra
load in a failure storm instead of multiplying it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class RetryBudget:
    """Token bucket of retries shared by the requests of one executor.

    Args:
        ratio: Retries earned per request (0.2 = at most 20 % extra calls).
        min_per_s: Retries always allowed per second, so a quiet service can still retry.
        window_s: How long earned retries stay available.
        clock: Monotonic clock; injectable for tests.
    """

    def __init__(self, *, ratio: float = 0.2, min_per_s: float = 10.0, window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._clock = clock
        self._cap = ratio * 1000 + min_per_s * window_s
        self._tokens = min_per_s * window_s
        self._last = clock()
        self.spent = 0
        self.refused = 0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._cap, self._tokens + (now - self._last) * self.min_per_s)
        self._last = now

    def deposit(self) -> None:
        """Credits one request's share of a retry."""
        self._refill()
        self._tokens = min(self._cap, self._tokens + self.ratio)

    def try_spend(self) -> bool:
        """Takes one retry from the budget; False when it is exhausted."""
        self._refill()
        if self._tokens >= 1.0 - 1e-9:  # ten deposits of 0.1 make one retry despite float rounding
            self._tokens -= 1.0
            self.spent += 1
            return True
        self.refused += 1
        return False


def backoff_s(retry: int, *, base_s: float = 0.05, cap_s: float = 1.0,
              rng: Callable[[], float] = random.random) -> float:
    """Full-jitter exponential backoff before retry number ``retry`` (1-based)."""
    return rng() * min(cap_s, base_s * (2 ** (retry - 1)))
