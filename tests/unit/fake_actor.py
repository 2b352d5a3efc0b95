"""In-process stand-ins for a Ray actor handle (unit tests of the state-actor clients and the graph stage, no Ray)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Generator
from typing import Any


class Handle:
    """Duck-typed actor handle: ``handle.m.remote(*a)`` runs ``target.m(*a)`` in-process.

    ``mode`` "ok" answers, "hung" never answers, "dead" raises like a dead actor.
    ``calls`` lists the methods the actor was asked to run (each op of an ``apply_batch``
    counts as its own method); ``round_trips`` counts the ``.remote`` calls.
    """

    def __init__(self, target: Any) -> None:
        self.target = target
        self.mode = "ok"
        self.calls: list[str] = []
        self.round_trips = 0

    def __getattr__(self, method: str) -> Any:
        handle = self

        class _Method:
            @staticmethod
            def remote(*args: Any) -> Any:
                handle.round_trips += 1
                if method == "apply_batch":
                    handle.calls.extend(m for m, _ in args[0])
                else:
                    handle.calls.append(method)
                return handle._run(method, args)

        return _Method

    async def _run(self, method: str, args: tuple[Any, ...]) -> Any:
        if self.mode == "hung":
            await asyncio.Event().wait()
        if self.mode == "dead":
            raise RuntimeError("The actor died unexpectedly before finishing this task.")
        result = getattr(self.target, method)(*args)
        return await result if inspect.isawaitable(result) else result


class _Done:
    """An already finished awaitable, like an ``ObjectRef`` whose task has run."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[None, None, Any]:
        return self.value
        yield  # makes this a generator (never reached)


class _Method:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> _Done:
        return _Done(self.fn(*args))


class InProcessActor:
    """Stands in for an actor handle: ``handle.method.remote(...)`` runs the method here, at once.

    Unlike :class:`Handle`, a call runs even when nobody awaits it, as a fire-and-forget
    ``.remote`` does (the graph stage's counters).
    """

    def __init__(self, body: Any) -> None:
        self.body = body

    def __getattr__(self, name: str) -> _Method:
        return _Method(getattr(self.body, name))
