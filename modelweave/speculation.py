"""Speculative work: a node's body that runs before anyone knows whether its answer is wanted.

A ``cache`` node with ``speculate: true`` starts its body together with the lookup, so a
miss does not wait for the lookup's round trip before the body starts (a shared cache lives in
the graph's state actor: ~2 ms at p50 on the reference app; there a longer parallel branch hides
it, so the reference app leaves this off, benchmarks/PERFORMANCE_LOG.md).
Until the lookup says "miss", the body's *side effects* must not happen: a hit throws the
body's work away, and a feedback adjustment, a cache store or a shadow outcome made by
thrown-away work would move shared state for a request that was answered from the cache.

The body task carries one :class:`asyncio.Future` per enclosing speculation (a context
variable, copied into every task the body starts). Code that writes shared state asks
:func:`committed` first; it waits until every enclosing lookup has resolved and returns
False when any of them hit (the write is then skipped). Model calls themselves are not
gated: they are pure, and their cost is the price of the speculation (cancelled on a hit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from contextvars import ContextVar, copy_context
from typing import Any, TypeVar

T = TypeVar("T")

#: The gates of the speculations enclosing the running task, outermost first; each resolves
#: to True (the lookup missed: the body's answer is used) or False (hit: it is discarded).
_GATES: ContextVar[tuple[asyncio.Future[bool], ...]] = ContextVar("modelweave_speculation", default=())
#: Per enclosing speculation (same order), how many degraded answers its body has produced.
_DEGRADED: ContextVar[tuple[list[int], ...]] = ContextVar("modelweave_speculation_degraded", default=())


def start(body: Coroutine[Any, Any, T]) -> tuple[asyncio.Future[bool], asyncio.Task[T], list[int]]:
    """Starts ``body`` as a task under one more gate.

    The task runs in a copy of the caller's context with the gate added, so every task it
    starts inherits the gate and the caller's own context stays as it was.

    Returns:
        The gate (the caller resolves it), the task, and the one-item count of degraded
        answers the body produces (:func:`note_degraded`), which a hit takes back.
    """
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[bool] = loop.create_future()
    degraded = [0]
    context = copy_context()
    context.run(_GATES.set, (*_GATES.get(), gate))
    context.run(_DEGRADED.set, (*_DEGRADED.get(), degraded))
    return gate, loop.create_task(body, context=context), degraded


def take_back_degraded(body_degraded: list[int]) -> int:
    """On a hit: the number of degraded answers the discarded body produced, taken back from the
    speculations enclosing the caller too (they counted the same answers)."""
    n = body_degraded[0]
    for count in _DEGRADED.get():
        count[0] -= n
    return n


def note_degraded() -> None:
    """Counts one degraded answer (a fallback, an exhausted validation) for every enclosing
    speculation: a hit that discards the body takes its count back from the request."""
    for count in _DEGRADED.get():
        count[0] += 1


def discarded() -> bool:
    """Whether an enclosing speculation has already thrown the running work away (its lookup
    hit, or its request ended); never waits."""
    return any(g.done() and (g.cancelled() or not g.result()) for g in _GATES.get())


async def committed() -> bool:
    """Waits until the enclosing speculations are decided; True when every one missed.

    Outside any speculation this returns True at once. Shielded: the caller being cancelled
    (the body, on a hit) must not cancel the gate another task resolves.
    """
    for gate in _GATES.get():
        if not gate.done():
            await asyncio.shield(gate)
        if gate.cancelled() or not gate.result():
            return False
    return True
