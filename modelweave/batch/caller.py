"""The executor's caller over model actor pools, with per-model micro-batching.

Many rows run through the executor concurrently in one graph stage. Each row's
``call`` for a model joins that model's pending list; the list is sent as one
``predict`` to the least-loaded worker of the model's pool when it reaches the
model's batch size, when the event loop goes idle (every row that was ready has
queued its call), or after ``max_wait_s``. Rows that take different branches
therefore only reach their own branches' models, and each model still gets real
batches.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message as ProtoMessage

from modelweave.errors import ModelError, ModelweaveError, Unavailable
from modelweave.spec import ModelNode
from modelweave.v1 import messages_pb2 as pb


@dataclass
class _Pending:
    """Calls waiting to be sent to one model's pool."""

    items: list[tuple[pb.Message, asyncio.Future[ProtoMessage]]] = field(default_factory=list)
    first_at: float = 0.0
    seen: int = 0
    scheduled: bool = False


class PoolCaller:
    """Calls model nodes on their actor pools in micro-batches.

    Args:
        pools: Worker actor handles per model node name.
        batch_sizes: Largest micro-batch per model node name.
        max_wait_s: Longest time a call waits for company before its batch is sent.
    """

    def __init__(self, pools: dict[str, list[Any]], batch_sizes: dict[str, int], *,
                 max_wait_s: float = 0.005) -> None:
        self.pools = pools
        self.batch_sizes = batch_sizes
        self.max_wait_s = max_wait_s
        self._pending: dict[str, _Pending] = {}
        self._in_flight: dict[str, list[int]] = {name: [0] * len(actors) for name, actors in pools.items()}
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, model: ModelNode, message: pb.Message) -> ProtoMessage:
        """Queues one envelope for ``model`` and waits for its part."""
        if model.name not in self.pools:
            raise ModelError(f"no worker pool for model {model.name!r}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ProtoMessage] = loop.create_future()
        pending = self._pending.setdefault(model.name, _Pending())
        if not pending.items:
            pending.first_at = time.monotonic()
        pending.items.append((message, future))
        if len(pending.items) >= self.batch_sizes.get(model.name, 64):
            self._flush(model.name)
        elif not pending.scheduled:
            pending.scheduled = True
            pending.seen = 0
            loop.call_soon(self._tick, model.name)
        return await future

    def _tick(self, name: str) -> None:
        """Sends the batch once no new call joined during a loop iteration (or it waited too long)."""
        pending = self._pending.get(name)
        if pending is None or not pending.items:
            if pending is not None:
                pending.scheduled = False
            return
        grew = len(pending.items) != pending.seen
        waited = time.monotonic() - pending.first_at
        if grew and waited < self.max_wait_s:
            pending.seen = len(pending.items)
            asyncio.get_running_loop().call_soon(self._tick, name)
            return
        pending.scheduled = False
        self._flush(name)

    def _flush(self, name: str) -> None:
        pending = self._pending[name]
        size = self.batch_sizes.get(name, 64)
        while pending.items:
            batch, pending.items = pending.items[:size], pending.items[size:]
            task = asyncio.ensure_future(self._send(name, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        pending.first_at = time.monotonic()

    async def _send(self, name: str, batch: list[tuple[pb.Message, asyncio.Future[ProtoMessage]]]) -> None:
        live = [(m, f) for m, f in batch if not f.done()]  # rows past their deadline are cancelled
        if not live:
            return
        loads = self._in_flight[name]
        index = min(range(len(loads)), key=loads.__getitem__)
        loads[index] += len(live)
        try:
            outcomes = await self.pools[name][index].predict.remote([m for m, _ in live])
        except Exception as exc:
            error = _transport_error(name, exc)
            for _, future in live:
                if not future.done():
                    future.set_exception(error)
            return
        finally:
            loads[index] -= len(live)
        if len(outcomes) != len(live):
            got = len(outcomes)
            outcomes = [ModelError(f"worker returned {got} outputs for {len(live)} inputs") for _ in live]
        for (_, future), outcome in zip(live, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


def _transport_error(name: str, exc: BaseException) -> ModelweaveError:
    """Types a failed actor call the way the Serve caller types a failed deployment call."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

    if isinstance(exc, ActorDiedError | ActorUnavailableError | RayActorError):
        return Unavailable(f"model {name!r} is unavailable: {type(exc).__name__}")
    if isinstance(exc, RayTaskError):
        cause = exc.cause if exc.cause is not None else exc
        if isinstance(cause, ModelweaveError):
            return cause
        return ModelError(f"model failed: {type(cause).__name__}: {cause}")
    if isinstance(exc, ModelweaveError):
        return exc
    return ModelError(f"model call failed: {type(exc).__name__}: {exc}")
