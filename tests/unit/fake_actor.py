"""An in-process stand-in for a Ray actor handle (unit tests of the state-actor clients, no Ray)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any


class Handle:
    """Duck-typed actor handle: ``handle.m.remote(*a)`` runs ``target.m(*a)`` in-process.

    ``mode`` "ok" answers, "hung" never answers, "dead" raises like a dead actor.
    """

    def __init__(self, target: Any) -> None:
        self.target = target
        self.mode = "ok"
        self.calls: list[str] = []

    def __getattr__(self, method: str) -> Any:
        handle = self

        class _Method:
            @staticmethod
            def remote(*args: Any) -> Any:
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
