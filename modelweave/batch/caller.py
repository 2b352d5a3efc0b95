"""The executor's callers in a graph stage: model actor pools (micro-batched) or inline.

Many rows run through the executor concurrently in one graph stage. Each row's
``call`` for a pooled model joins that model's queue (see
:mod:`modelweave.batch.coalesce`); the queue goes out as one ``predict`` to the
least-loaded worker of the model's pool. Rows that take different branches therefore
only reach their own branches' models, and each model still gets real batches.

Optionally, cheap models (rule-based glue whose adapter is not ``blocking``) run
inline in the stage process instead, which saves one inter-process hop per step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

from modelweave.batch.coalesce import Coalescer
from modelweave.checker import CheckedGraph
from modelweave.errors import ModelError, ModelweaveError, ReplicaLost
from modelweave.executor import ModelReply
from modelweave.local import LocalCaller
from modelweave.spec import ModelNode
from modelweave.v1 import messages_pb2 as pb


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
        self._in_flight: dict[str, list[int]] = {name: [0] * len(actors) for name, actors in pools.items()}
        self._batcher: Coalescer[pb.Message, ModelReply] = Coalescer(
            self._send, max_batch=lambda name: batch_sizes.get(str(name), 64), max_wait_s=max_wait_s)

    async def call(self, model: ModelNode, message: pb.Message) -> ModelReply:
        """Queues one envelope for ``model`` and waits for its part (with its CPU cost)."""
        if model.name not in self.pools:
            raise ModelError(f"no worker pool for model {model.name!r}")
        return await self._batcher.submit(model.name, message)

    async def _send(self, key: Hashable, messages: list[pb.Message]) -> list[Any]:
        name = str(key)
        loads = self._in_flight[name]
        index = min(range(len(loads)), key=loads.__getitem__)
        loads[index] += len(messages)
        try:
            outcomes: list[Any] = await self.pools[name][index].predict.remote(messages)
        except Exception as exc:
            return [_transport_error(name, exc) for _ in messages]
        finally:
            loads[index] -= len(messages)
        if len(outcomes) != len(messages):
            got = len(outcomes)
            return [ModelError(f"worker returned {got} outputs for {len(messages)} inputs") for _ in messages]
        return outcomes


class InlineCaller(LocalCaller):
    """Runs some model nodes' adapters inside the graph stage process.

    Args:
        graph: The checked graph.
        names: Model node names to load here.
    """

    def __init__(self, graph: CheckedGraph, names: Iterable[str]) -> None:
        super().__init__(graph, names=names, serving=True)


class StageCaller:
    """Sends each model node to its pool, or runs it inline when it is loaded here.

    Args:
        pools: The pooled models' caller.
        inline: The inline models' caller (None: every model is pooled).
    """

    def __init__(self, pools: PoolCaller, inline: InlineCaller | None = None) -> None:
        self._pools = pools
        self._inline = inline

    async def call(self, model: ModelNode, message: pb.Message) -> ModelReply:
        """Runs ``model`` on one envelope wherever it lives."""
        if self._inline is not None and model.name in self._inline.adapters:
            return await self._inline.call(model, message)
        return await self._pools.call(model, message)


    async def call_batch(self, model: ModelNode, messages: Sequence[pb.Message]) -> list[Any]:
        """Runs ``model`` on many envelopes: a reply or the exception of each, in order.

        Inline models run as one ``predict`` (see :meth:`LocalCaller.call_batch`); pooled
        ones join their pool's queue row by row, where the coalescer forms the micro-batches.
        """
        if self._inline is not None and model.name in self._inline.adapters:
            return await self._inline.call_batch(model, messages)
        return list(await asyncio.gather(*(self._pools.call(model, m) for m in messages), return_exceptions=True))


def _transport_error(name: str, exc: BaseException) -> ModelweaveError:
    """Types a failed actor call the way the Serve caller types a failed deployment call."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

    if isinstance(exc, ActorDiedError | ActorUnavailableError | RayActorError):
        return ReplicaLost(f"model {name!r} is unavailable: {type(exc).__name__}")
    if isinstance(exc, RayTaskError):
        cause = exc.cause if exc.cause is not None else exc
        if isinstance(cause, ModelweaveError):
            return type(cause)(cause.message, node=cause.node)
        return ModelError(f"model failed: {type(cause).__name__}: {cause}")
    if isinstance(exc, ModelweaveError):
        return type(exc)(exc.message, node=exc.node)
    return ModelError(f"model call failed: {type(exc).__name__}: {exc}")
