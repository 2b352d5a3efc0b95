"""The generic model deployment: one Ray Serve deployment per model node.

It adapts any :class:`modelweave.adapters.base.ModelAdapter` to Serve: loads it once
per replica, answers one envelope per call, optionally groups concurrent calls into
batches (:class:`modelweave.inprocess_batching.InProcessBatcher`, sized per node: it starts
a batch at once when the model is idle, where ``serve.batch`` would wait for its timeout),
and reports the adapter's health.

Every call carries its request's wall-clock deadline: work whose caller has already
given up is skipped, not run. It also carries the request's W3C trace context, which
adapters that call external services pass on (:func:`modelweave.trace.trace_headers`).
In a batch, a row that fails fails alone (:func:`modelweave.model_calls.predict_rows`),
exactly as in the batch job.
"""

from __future__ import annotations

from typing import Any

from modelweave.adapters.base import build_adapter
from modelweave.errors import ModelweaveError
from modelweave.executor import ModelReply
from modelweave.inprocess_batching import InProcessBatcher
from modelweave.model_calls import Outcome, predict_rows_async
from modelweave.process_isolation import lower_cpu_priority
from modelweave.spec import ModelNode
from modelweave.v1 import messages_pb2 as pb


class ModelDeployment:
    """Serves one model node.

    Args:
        node: The model node, as plain data (``ModelNode.model_dump()``).
    """

    def __init__(self, node: dict[str, Any]) -> None:
        self.node = ModelNode.model_validate(node)
        lower_cpu_priority(self.node.deployment.nice)
        self.adapter = build_adapter(self.node.impl, self.node.params)
        self.adapter.load()
        batching = self.node.deployment.batching
        self._batcher = (InProcessBatcher(self.adapter, batching.max_batch_size, batching.batch_wait_timeout_s)
                         if batching is not None else None)

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
        if self._batcher is not None:
            # Errors come back per row, never for the batch: other clients' good rows keep their answers.
            outcome: Outcome = await self._batcher.call(message, deadline, trace)
        else:
            outcome = (await predict_rows_async(self.adapter, [message], [deadline], [trace]))[0]
        if isinstance(outcome, ModelweaveError):
            raise outcome
        return outcome

    def check_health(self) -> None:
        """Serve's health probe: delegates to the adapter."""
        self.adapter.health()
