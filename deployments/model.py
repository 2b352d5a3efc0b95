"""The generic model deployment: one Ray Serve deployment per model node.

It adapts any :class:`modelweave.adapters.base.ModelAdapter` to Serve: loads it once
per replica, answers one envelope per call, optionally groups concurrent calls into
batches (``serve.batch``, sized per node), and reports the adapter's health.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from google.protobuf.message import Message as ProtoMessage
from ray import serve

from modelweave.adapters.base import build_adapter
from modelweave.errors import ModelError
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

    async def __call__(self, message: pb.Message) -> ProtoMessage:
        """Answers one envelope with the produced part."""
        if self._batching:
            result: ProtoMessage = await self._batched(message)
            return result
        return (await self._predict([message]))[0]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _batched(self, messages: list[pb.Message]) -> list[ProtoMessage]:
        return await self._predict(messages)

    async def _predict(self, batch: Sequence[pb.Message]) -> list[ProtoMessage]:
        if self.adapter.blocking:
            # CPU-bound models run in a thread so the replica keeps serving health checks.
            outputs = await asyncio.to_thread(self.adapter.predict, batch)
        else:
            outputs = self.adapter.predict(batch)
        if len(outputs) != len(batch):
            raise ModelError(f"adapter returned {len(outputs)} outputs for {len(batch)} inputs",
                             node=self.node.name)
        return outputs

    def check_health(self) -> None:
        """Serve's health probe: delegates to the adapter."""
        self.adapter.health()
