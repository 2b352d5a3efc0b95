"""In-process caller: runs model adapters inside the current process.

Used by unit tests, ``modelweave check --smoke`` style checks and the naive batch
baseline. Each model node gets one loaded adapter; blocking adapters run in a
thread so parallel branches still overlap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from modelweave.adapters.base import ModelAdapter, build_adapter, predict_measured
from modelweave.checker import CheckedGraph
from modelweave.errors import ModelError
from modelweave.executor import ModelReply
from modelweave.model_calls import Outcome
from modelweave.spec import ModelNode
from modelweave.trace import request_deadline
from modelweave.v1 import messages_pb2 as pb


class LocalCaller:
    """Calls adapters loaded in this process.

    Args:
        graph: The checked graph whose model nodes to load.
        adapters: Pre-built adapters by node name (tests inject instances here).
        names: Load only these model nodes (default: all).
    """

    def __init__(self, graph: CheckedGraph, adapters: dict[str, ModelAdapter] | None = None,
                 names: Iterable[str] | None = None) -> None:
        self.adapters: dict[str, ModelAdapter] = dict(adapters or {})
        self._produces = {name: graph.nodes[path].produces for name, path in graph.model_paths.items()}
        wanted = set(graph.models) if names is None else set(names)
        for name, node in graph.models.items():
            if name in wanted and name not in self.adapters:
                adapter = build_adapter(node.impl, node.params)
                adapter.load()
                self.adapters[name] = adapter

    async def call(self, model: ModelNode, message: pb.Message) -> ModelReply:
        adapter = self.adapters[model.name]
        if adapter.blocking:
            outputs, cpu_ms = await asyncio.to_thread(predict_measured, adapter, [message])
        else:
            outputs, cpu_ms = predict_measured(adapter, [message])
        if len(outputs) != 1:
            raise ModelError(f"adapter returned {len(outputs)} outputs for 1 input")
        return ModelReply(outputs[0], cpu_ms)

    async def call_many(self, models: Sequence[ModelNode], message: pb.Message) -> list[Outcome]:
        """Runs a co-located run of model nodes in order, as a group replica does."""
        from modelweave.group_calls import run_members  # it imports the executor, as this module does

        members = [(m.name, self._produces[m.name], self.adapters[m.name]) for m in models]
        if any(adapter.blocking for _, _, adapter in members):
            return await asyncio.to_thread(run_members, members, message, request_deadline.get())
        return run_members(members, message, request_deadline.get())
