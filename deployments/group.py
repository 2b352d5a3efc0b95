"""The co-located model deployment: one replica process serves a group of model nodes.

Built for ``deployment: {group: NAME}`` (see :mod:`modelweave.layout`). Every replica
loads the group's adapters once (members with the same model and params share one copy).
A single node is answered by ``__call__``; a run of consecutive group members of a chain
by ``call_many``, in-process, each member reading what the previous ones wrote, with its
own latency and CPU time (the executor makes one span per node from them). As in the
one-model deployment, every call carries the request's wall-clock deadline and work whose
caller has gone is skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from modelweave.adapters.base import ModelAdapter, load_shared, resolve_adapter
from modelweave.errors import ModelError, ModelweaveError
from modelweave.executor import ModelReply
from modelweave.group_calls import run_members
from modelweave.messages import part_name
from modelweave.model_calls import Outcome, predict_rows_async
from modelweave.process_isolation import lower_cpu_priority
from modelweave.spec import ModelNode
from modelweave.trace import row_traces
from modelweave.v1 import messages_pb2 as pb


class GroupDeployment:
    """Serves the model nodes of one group.

    Args:
        nodes: The group's model nodes, as plain data (``ModelNode.model_dump()``).
        nice: CPU priority of the replica process (the group's ``deployment.nice``).
    """

    def __init__(self, nodes: list[dict[str, Any]], nice: int = 5) -> None:
        lower_cpu_priority(nice)
        members = [ModelNode.model_validate(data) for data in nodes]
        self.produces: dict[str, str] = {}
        for node in members:
            cls, params = resolve_adapter(node.impl, node.params)
            self.produces[node.name] = part_name(cls.signature(params)[1])
        self.adapters: dict[str, ModelAdapter] = load_shared((n.name, n.impl, n.params) for n in members)

    async def __call__(self, message: pb.Message, deadline: float | None = None, model: str = "",
                       trace: tuple[str, str] | None = None) -> ModelReply:
        """Answers one envelope for group member ``model``.

        Args:
            message: The envelope.
            deadline: The request's wall-clock (Unix) deadline, if any.
            model: The group member to run.
            trace: The request's W3C ``(traceparent, tracestate)``, if any.

        Raises:
            ModelweaveError: this call's own failure (DEADLINE_EXCEEDED when skipped).
        """
        adapter = self._adapter(model)
        outcome = (await predict_rows_async(adapter, [message], [deadline], [trace]))[0]
        if isinstance(outcome, ModelweaveError):
            raise outcome
        return outcome

    async def call_many(self, message: pb.Message, deadline: float | None, models: Sequence[str],
                        trace: tuple[str, str] | None = None) -> list[Outcome]:
        """Runs group members ``models`` in order on one envelope.

        Returns:
            One outcome per member that ran; errors are returned, not raised, so the
            executor still gets the spans of the members before the failure.
        """
        members = [(name, self.produces[name], self._adapter(name)) for name in models]
        with row_traces([message], [trace]):
            if any(adapter.blocking for _, _, adapter in members):
                return await asyncio.to_thread(run_members, members, message, deadline)
            return run_members(members, message, deadline)

    def _adapter(self, model: str) -> ModelAdapter:
        adapter = self.adapters.get(model)
        if adapter is None:
            raise ModelError(f"model {model!r} is not in this group ({', '.join(sorted(self.adapters))})")
        return adapter

    def check_health(self) -> None:
        """Serve's health probe: every member's adapter must be healthy."""
        for adapter in self.adapters.values():
            adapter.health()
