"""Admission control for graph requests: bounded concurrency, a bounded deadline-aware queue.

Transport-free: the ingress wraps each graph run in :meth:`AdmissionController.admit`.
Under overload an unbounded system gives every request a slice of service and finishes
none in time (congestion collapse). This controller instead

* runs at most ``max_concurrent`` graph runs at once (per ingress replica);
* queues at most ``max_queued`` more, in arrival order;
* refuses at once a request that the queue could not start before its deadline
  (predicted from the measured completion rate and service time), so a rejection is
  fast and cheap, not a timeout;
* drops a queued request as soon as its deadline can no longer be met, before it uses
  any model;
* suggests a ``Retry-After`` that grows with the backlog, so well-behaved clients come
  back when there is room instead of hammering the rejection path. The backlog counts the
  clients waiting *outside* too: every shed client whose Retry-After has not run out yet, so
  the n-th one shed is told about n / (2 x runs per second): a virtual queue (drained at twice
  the service rate, because clients jitter their waits). Counting only the
  real queue told a 200-client flood to come back in 3-4 s while the graph finished ~20 runs
  a second, so most returns were shed again and the refusals (a proxy hop and an ingress
  call each) took CPU from the runs.

Ray Serve's own ``max_queued_requests`` (set on every deployment by default, see
``deployments/app.py``) stays underneath as a backstop; this layer adds what Serve
lacks: deadline awareness and an informed ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from modelweave.errors import Overloaded

#: Recent graph runs whose durations estimate the service time.
_SERVICE_SAMPLES = 64
#: Quantile of recent run durations used as "how long a run takes": a high one, because a run
#: started with only the median left before its deadline misses it about half the time, and
#: a run that misses its deadline is wasted work that pushes the next ones over theirs (with the
#: median, a 200-client flood wasted 3x more runs on 504s).
_SERVICE_QUANTILE = 0.9
#: Runs longer than this multiple of the median are left out of that quantile: after a model
#: replica's restart the runs that waited it out (10+ s, against ~0.4 s) would otherwise be the
#: p90 for a while, and the controller refused requests the recovered graph answers in half a
#: second (counted as lost in the replica-kill benchmark). A graph that slows down as a whole
#: moves its median too, so its slow runs still count.
_OUTLIER_FACTOR = 4.0
#: Longest Retry-After suggested, in seconds.
MAX_RETRY_AFTER_S = 30.0
#: A shed client is told its place in the virtual queue over this multiple of the completion
#: rate. Clients jitter their waits (x0.5-1.5 in the benchmark; "full jitter" in AWS's SDKs), so
#: places told at exactly the service rate come back at about 1.1x it: the real queue runs dry
#: between returns and the graph idles (5x load: 69 % of capacity, from 92-99 % before). At 2x
#: the returns keep the queue fed and still come back half as often as the 2-4 s the real queue
#: alone would have suggested.
RETURN_RATE_FACTOR = 2.0
#: Share of a request's budget kept back for the answer's way out, at most
#: :data:`MAX_REPLY_MARGIN_S`: a run abandoned exactly at the deadline answers its 504 after it
#: (the proxy, the network and the client still lie ahead). In a 200-client flood with 2 s
#: deadlines, most late refusals were 504s answered 2.0-2.3 s after they were sent.
REPLY_MARGIN = 0.05
MAX_REPLY_MARGIN_S = 0.1


def request_start_age(header: str | None, now_wall: float, budget_s: float) -> float:
    """Seconds a request already waited in front of the ingress, from its ``X-Request-Start`` header.

    The header is what NGINX (``t=${msec}``), HAProxy and Heroku's router set when they accept a
    request: ``t=`` and a Unix time in seconds, milliseconds or microseconds (told apart by size,
    as APM agents do). Time queued in Serve's proxy or a load balancer then counts against the
    request's budget, which Serve alone cannot report.

    Args:
        header: The header's value (None or unparsable: 0).
        now_wall: ``time.time()`` now.
        budget_s: The request's budget; the age is clamped to [0, budget_s] (a clock ahead of this
            one gives 0; an age beyond the budget means the request already expired).

    Returns:
        The age in seconds.
    """
    if not header:
        return 0.0
    value = header.strip()
    if value.startswith("t="):
        value = value[2:]
    try:
        stamp = float(value)
    except ValueError:
        return 0.0
    if stamp > 1e14:  # microseconds
        stamp /= 1e6
    elif stamp > 1e11:  # milliseconds
        stamp /= 1e3
    return min(max(0.0, now_wall - stamp), budget_s)


def answer_deadline(start: float, budget_s: float) -> float:
    """When a request started at ``start`` with ``budget_s`` must be answered by, on the same clock.

    The budget less a reply margin (5 %, at most 100 ms): the work stops early enough for its
    answer, success or DEADLINE_EXCEEDED, to reach the client within the budget.
    """
    return start + budget_s - min(MAX_REPLY_MARGIN_S, REPLY_MARGIN * budget_s)


@dataclass
class _Waiter:
    deadline: float
    future: asyncio.Future[None]


class AdmissionController:
    """Bounds the graph runs of one ingress replica.

    Args:
        max_concurrent: Graph runs in progress at once.
        max_queued: Requests waiting for a slot; more are shed at once.
        window_s: Window over which the completion rate is measured.
        clock: Monotonic clock (seconds); injectable for tests.
        on_shed: Called with the reason (``queue_full`` / ``deadline``) of every shed request.
    """

    def __init__(self, max_concurrent: int, max_queued: int, *, window_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_shed: Callable[[str], None] | None = None) -> None:
        if max_concurrent < 1 or max_queued < 0:
            raise ValueError("need max_concurrent >= 1 and max_queued >= 0")
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.in_flight = 0
        self._window_s = window_s
        self._clock = clock
        self._on_shed = on_shed
        self._waiters: deque[_Waiter] = deque()
        self._completions: deque[float] = deque()
        # When each shed client, if it honours its Retry-After, comes back (a min-heap).
        self._returns: list[float] = []
        self._service: deque[float] = deque(maxlen=_SERVICE_SAMPLES)

    # -- estimates --------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Requests waiting for a slot now."""
        return len(self._waiters)

    @property
    def service_s(self) -> float:
        """High quantile of recent admitted graph runs' durations, outliers left out (0 before any)."""
        if not self._service:
            return 0.0
        ordered = sorted(self._service)
        limit = _OUTLIER_FACTOR * ordered[len(ordered) // 2]
        typical = [s for s in ordered if s <= limit]
        return typical[min(len(typical) - 1, int(_SERVICE_QUANTILE * len(typical)))]

    def completion_rate(self) -> float:
        """Graph runs finished per second over the last window (0 when none)."""
        now = self._clock()
        _trim(self._completions, now - self._window_s)
        if not self._completions:
            return 0.0
        return len(self._completions) / self._window_s

    @property
    def waiting_outside(self) -> int:
        """Shed clients whose suggested Retry-After has not run out yet."""
        now = self._clock()
        while self._returns and self._returns[0] <= now:
            heapq.heappop(self._returns)
        return len(self._returns)

    def retry_after_s(self) -> float:
        """Whole seconds a shed client should wait: the backlog divided by the service rate.

        The backlog is the queue plus the shed clients still waiting out their Retry-After: a
        client shed now is served after them, so it is told its place in that line over
        :data:`RETURN_RATE_FACTOR` times the rate.
        Clients that come back early are counted twice (both waits still run), which only
        lengthens the next suggestion, up to :data:`MAX_RETRY_AFTER_S`.
        """
        rate = self.completion_rate()
        if rate <= 0:
            return 1.0
        demand = len(self._waiters) + self.waiting_outside + 1  # + the client being told
        return float(min(MAX_RETRY_AFTER_S, max(1, math.ceil(demand / (RETURN_RATE_FACTOR * rate)))))

    # -- admission --------------------------------------------------------------------

    @asynccontextmanager
    async def admit(self, deadline: float) -> AsyncIterator[None]:
        """Holds one slot for the duration of the ``async with`` body.

        Args:
            deadline: The request's deadline on ``clock``.

        Raises:
            Overloaded: the request was shed (queue full, or its deadline cannot be met).
        """
        await self.acquire(deadline)
        start = self._clock()
        try:
            yield
        finally:
            self.release(self._clock() - start)

    async def acquire(self, deadline: float) -> None:
        """Takes a slot, waiting in the queue while that can still meet ``deadline``.

        Raises:
            Overloaded: shed; the slot was not taken.
        """
        now = self._clock()
        if self.in_flight < self.max_concurrent and not self._waiters:
            self.in_flight += 1
            return
        if len(self._waiters) >= self.max_queued:
            raise self._shed("queue_full", f"the graph is at capacity ({self.in_flight} running, "
                                           f"{len(self._waiters)} queued)")
        latest_start = deadline - self.service_s
        rate = self.completion_rate()
        if rate > 0 and now + (len(self._waiters) + 1) / rate > latest_start:
            raise self._shed("deadline", "the graph cannot start this request before its deadline "
                                         f"({len(self._waiters)} queued, {rate:.1f} runs/s)")
        waiter = _Waiter(deadline, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            done, _ = await asyncio.wait({waiter.future}, timeout=max(0.0, latest_start - now))
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        if not done:
            self._abandon(waiter)
            raise self._shed("deadline", "the request waited in the queue until its deadline could not be met")
        waiter.future.result()  # re-raises a shed decided at grant time

    def release(self, service_s: float) -> None:
        """Frees a slot after a run of ``service_s`` seconds and starts the next waiter."""
        self.in_flight -= 1
        now = self._clock()
        self._completions.append(now)
        self._service.append(service_s)
        self._grant(now)

    def _grant(self, now: float) -> None:
        while self._waiters and self.in_flight < self.max_concurrent:
            waiter = self._waiters.popleft()
            if waiter.future.done():  # cancelled while queued
                continue
            if now > waiter.deadline - self.service_s:
                # Hopeless by now: answer it (fast) rather than start work that cannot finish.
                waiter.future.set_exception(self._shed("deadline", "the request's deadline passed in the queue"))
                continue
            self.in_flight += 1
            waiter.future.set_result(None)

    def _abandon(self, waiter: _Waiter) -> None:
        """Leaves the queue; gives back a slot granted in the same instant."""
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass
        if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
            self.in_flight -= 1
            self._grant(self._clock())
        elif not waiter.future.done():
            waiter.future.cancel()

    def _shed(self, reason: str, why: str) -> Overloaded:
        wait = self.retry_after_s()
        heapq.heappush(self._returns, self._clock() + wait)
        if self._on_shed is not None:
            self._on_shed(reason)
        return Overloaded(f"overloaded: {why}; retry later", retry_after_s=wait)


def _trim(stamps: deque[float], horizon: float) -> None:
    while stamps and stamps[0] < horizon:
        stamps.popleft()
