"""The generic model deployment: one Ray Serve deployment per model node.

It adapts any :class:`modelweave.adapters.base.ModelAdapter` to Serve: loads it once
per replica, answers one envelope per call, optionally groups concurrent calls into
batches (``serve.batch``, sized per node), and reports the adapter's health.

Every call carries its request's wall-clock deadline: work whose caller has already
given up is skipped, not run. It also carries the request's W3C trace context, which
adapters that call external services pass on (:func:`modelweave.trace.trace_headers`).
In a batch, a row that fails fails alone (:func:`modelweave.model_calls.predict_rows`),
exactly as in the batch job.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from ray import serve

from modelweave.adapters.base import build_adapter
from modelweave.errors import ModelweaveError
from modelweave.executor import ModelReply
from modelweave.model_calls import Outcome, predict_rows
from modelweave.spec import ModelNode
from modelweave.trace import row_traces
from modelweave.v1 import messages_pb2 as pb


class ModelDeployment:
    """Serves one model node.

    Args:
        node: The model node, as plain data (``ModelNode.model_dump()``).
    """

    def __init__(self, node: dict[str, Any]) -> None:
        self.node = ModelNode.model_validate(node)
        _lower_cpu_priority(self.node.deployment.nice)
        self.adapter = build_adapter(self.node.impl, self.node.params)
        self.adapter.load()
        batching = self.node.deployment.batching
        self._batching = batching is not None
        if batching is not None:
            # serve.batch wrappers expose setters, so batch size is per node, not per class.
            batched: Any = self._batched
            batched.set_max_batch_size(batching.max_batch_size)
            batched.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    async def __call__(self, message: pb.Message, deadline: float | None = None,
                       trace: tuple[str, str] | None = None) -> ModelReply:
        """Answers one envelope with the produced part and its CPU cost.

        Args:
            message: The envelope.
            deadline: The request's wall-clock (Unix) deadline, if any.
            trace: The request's W3C ``(traceparent, tracestate)``, if any (see
                :func:`modelweave.trace.trace_headers`).

        Raises:
            ModelweaveError: this row's own failure (DEADLINE_EXCEEDED when skipped).
        """
        if self._batching:
            outcome: Outcome = await self._batched((message, deadline, trace))
        else:
            outcome = (await self._predict([message], [deadline], [trace]))[0]
        if isinstance(outcome, ModelweaveError):
            raise outcome
        return outcome

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _batched(self, calls: list[tuple[pb.Message, float | None, tuple[str, str] | None]]) -> list[Outcome]:
        # Errors are returned per row, never raised: a raise here would fail every request
        # of the batch, including other clients' good ones.
        return await self._predict([c[0] for c in calls], [c[1] for c in calls], [c[2] for c in calls])

    async def _predict(self, batch: Sequence[pb.Message], deadlines: Sequence[float | None],
                       traces: Sequence[tuple[str, str] | None]) -> list[Outcome]:
        with row_traces(batch, traces):  # the thread below inherits it
            if self.adapter.blocking:
                # CPU-bound models run in a thread so the replica keeps serving health checks.
                return await asyncio.to_thread(predict_rows, self.adapter, batch, deadlines)
            return predict_rows(self.adapter, batch, deadlines)

    def check_health(self) -> None:
        """Serve's health probe: delegates to the adapter."""
        self.adapter.health()


def _lower_cpu_priority(nice: int) -> None:
    """Raises this process's niceness to ``nice`` (never lowers it; needs no privilege).

    On a saturated machine the model threads would otherwise compete on equal terms with
    Serve's proxy and the ingress, and a request that is only going to be refused still
    waits seconds for a CPU slice to be refused.
    """
    current = os.nice(0)
    if nice > current:
        os.nice(nice - current)
