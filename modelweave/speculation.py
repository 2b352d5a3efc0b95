"""Speculative work: a node's body that runs before anyone knows whether its answer is wanted.

A ``cache`` node with ``speculate: true`` starts its body together with the lookup, so a
miss does not wait for the lookup's round trip before the body starts (the reference app's
shared cache lives in the state actor: ~2 ms at p50, on every request's critical path).
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
from contextvars import ContextVar

#: The gates of the speculations enclosing the running task, outermost first; each resolves
#: to True (the lookup missed: the body's answer is used) or False (hit: it is discarded).
_GATES: ContextVar[tuple[asyncio.Future[bool], ...]] = ContextVar("modelweave_speculation", default=())


def open_gate() -> tuple[asyncio.Future[bool], tuple[asyncio.Future[bool], ...]]:
    """A new gate for one speculation, and the gate tuple its body runs under."""
    gate: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    return gate, (*_GATES.get(), gate)


def run_under(gates: tuple[asyncio.Future[bool], ...]) -> object:
    """Sets the gates for tasks created next in this context; returns the reset token."""
    return _GATES.set(gates)


def reset(token: object) -> None:
    """Undoes :func:`run_under`."""
    _GATES.reset(token)  # type: ignore[arg-type]


def pending() -> bool:
    """Whether the running task works for a speculation that has not been decided yet."""
    return any(not gate.done() for gate in _GATES.get())


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
