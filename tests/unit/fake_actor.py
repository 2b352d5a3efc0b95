"""An in-process stand-in for a Ray actor handle (unit tests of the state-actor clients, no Ray)."""

from __future__ import annotations

import asyncio
import inspect
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
