"""The generic model deployment: one Ray Serve deployment per model node.

It adapts any :class:`modelweave.adapters.base.ModelAdapter` to Serve: loads it once
per replica, answers one envelope per call, optionally groups concurrent calls into
batches (``serve.batch``, sized per node), and reports the adapter's health.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ray import serve

from modelweave.adapters.base import build_adapter, predict_measured
from modelweave.errors import ModelError
from modelweave.executor import ModelReply
from modelweave.spec import ModelNode
from modelweave.v1 import messages_pb2 as pb


class ModelDeployment:
    """Serves one model node.

    Args:
        node: The model node, as plain data (``ModelNode.model_dump()``).
    """

    def __init__(self, node: dict[str, Any]) -> None:
        self.node = ModelNode.model_validate(node)
        self.adapter = build_adapter(self.node.impl, self.node.params)
        self.adapter.load()
        batching = self.node.deployment.batching
        self._batching = batching is not None
        if batching is not None:
            # serve.batch wrappers expose setters, so batch size is per node, not per class.
            batched: Any = self._batched
            batched.set_max_batch_size(batching.max_batch_size)
            batched.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    async def __call__(self, message: pb.Message) -> ModelReply:
        """Answers one envelope with the produced part and its CPU cost."""
        if self._batching:
            result: ModelReply = await self._batched(message)
            return result
        return (await self._predict([message]))[0]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _batched(self, messages: list[pb.Message]) -> list[ModelReply]:
        return await self._predict(messages)

    async def _predict(self, batch: Sequence[pb.Message]) -> list[ModelReply]:
        if self.adapter.blocking:
            # CPU-bound models run in a thread so the replica keeps serving health checks.
            outputs, cpu_ms = await asyncio.to_thread(predict_measured, self.adapter, batch)
        else:
            outputs, cpu_ms = predict_measured(self.adapter, batch)
        if len(outputs) != len(batch):
            raise ModelError(f"adapter returned {len(outputs)} outputs for {len(batch)} inputs")
        return [ModelReply(part, cpu_ms) for part in outputs]

    def check_health(self) -> None:
        """Serve's health probe: delegates to the adapter."""
        self.adapter.health()
