"""In-process caller: runs model adapters inside the current process.

Used by the ingress for the models that run inside it (``deployment.inline``), the batch
job's graph stage, ``modelweave eval`` and unit tests. Blocking adapters run in a thread so
parallel branches still overlap. With ``serving=True`` (the ingress, the batch stage) nodes
with the same model and params share one loaded adapter, and a node that has
``deployment.batching`` gets dynamic batching as its replica would
(:mod:`modelweave.inprocess_batching`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from modelweave.adapters.base import ModelAdapter, load_shared, predict_measured
from modelweave.checker import CheckedGraph
from modelweave.errors import ModelError, ModelweaveError
from modelweave.executor import ModelReply
from modelweave.inprocess_batching import InProcessBatcher
from modelweave.model_calls import Outcome
from modelweave.spec import BatchingSettings, ModelNode
from modelweave.trace import request_deadline
from modelweave.v1 import messages_pb2 as pb


class LocalCaller:
    """Calls adapters loaded in this process.

    Args:
        graph: The checked graph whose model nodes to load.
        adapters: Pre-built adapters by node name (tests inject instances here).
        names: Load only these model nodes (default: all).
        serving: Share one loaded copy between nodes with the same model and params, and
            batch concurrent calls of blocking nodes that set ``deployment.batching`` (the
            ingress and the batch stage; off for evaluation, which measures models alone, and
            for tests, which count calls per node).
    """

    def __init__(self, graph: CheckedGraph, adapters: dict[str, ModelAdapter] | None = None,
                 names: Iterable[str] | None = None, *, serving: bool = False) -> None:
        self.adapters: dict[str, ModelAdapter] = dict(adapters or {})
        self._produces = {name: graph.nodes[path].produces for name, path in graph.model_paths.items()}
        wanted = set(graph.models) if names is None else set(names)
        missing = [(name, node.impl, node.params) for name, node in graph.models.items()
                   if name in wanted and name not in self.adapters]
        # Serving, ``inline: process`` nodes run in child processes (one per distinct model and
        # params); elsewhere (evaluation, tests) they load here like any other node.
        isolated_names = {name for name, _, _ in missing
                          if serving and graph.models[name].deployment.inline == "process"}
        isolated = [m for m in missing if m[0] in isolated_names]
        if isolated:
            from modelweave.process_isolation import ProcessAdapter

            def child(impl: str, params: Mapping[str, Any], *, name: str) -> ModelAdapter:
                return ProcessAdapter(impl, params, name=name, nice=graph.models[name].deployment.nice)

            self.adapters.update(load_shared(isolated, factory=child))
            missing = [m for m in missing if m[0] not in isolated_names]
        # Not serving: one load per node, so every node has its own copy.
        for share in [missing] if serving else [[m] for m in missing]:
            self.adapters.update(load_shared(share))
        #: In-process batchers by node name; nodes sharing an adapter share its batcher.
        self.batchers: dict[str, InProcessBatcher] = {}
        if serving:
            by_adapter: dict[int, InProcessBatcher] = {}
            for name, node in graph.models.items():
                adapter = self.adapters.get(name)
                settings = node.deployment.batching
                if settings is None and name in isolated_names:
                    # A child answers one call at a time: its callers queue here, on the event loop,
                    # not in worker threads (a child reloading its model would hold them all).
                    settings = BatchingSettings(max_batch_size=1, batch_wait_timeout_s=0)
                if adapter is None or not adapter.blocking or settings is None:
                    continue
                batcher = by_adapter.setdefault(
                    id(adapter), InProcessBatcher(adapter, settings.max_batch_size, settings.batch_wait_timeout_s))
                batcher.max_batch_size = max(batcher.max_batch_size, settings.max_batch_size)
                batcher.wait_s = min(batcher.wait_s, settings.batch_wait_timeout_s)
                self.batchers[name] = batcher

    async def call(self, model: ModelNode, message: pb.Message) -> ModelReply:
        batcher = self.batchers.get(model.name)
        if batcher is not None:
            outcome = await batcher.call(message, request_deadline.get())
            if isinstance(outcome, ModelweaveError):
                raise outcome
            return outcome
        adapter = self.adapters[model.name]
        if adapter.blocking:
            outputs, cpu_ms = await asyncio.to_thread(predict_measured, adapter, [message])
        else:
            outputs, cpu_ms = predict_measured(adapter, [message])
        if len(outputs) != 1:
            raise ModelError(f"adapter returned {len(outputs)} outputs for 1 input")
        return ModelReply(outputs[0], cpu_ms)

    async def call_batch(self, model: ModelNode, messages: Sequence[pb.Message]) -> list[Any]:
        """Runs ``model`` on many envelopes: a :class:`ModelReply` or the exception of each, in order.

        An adapter without a batcher gets them in one ``predict``; when that fails, each
        envelope is retried alone, so one bad row fails alone, as it would row by row. Batched
        adapters go through their batcher, which already shares calls between rows.
        """
        adapter = self.adapters[model.name]
        if model.name not in self.batchers and len(messages) > 1:
            try:
                if adapter.blocking:
                    outputs, cpu_ms = await asyncio.to_thread(predict_measured, adapter, messages)
                else:
                    outputs, cpu_ms = predict_measured(adapter, messages)
                if len(outputs) == len(messages):
                    return [ModelReply(out, cpu_ms) for out in outputs]
            except Exception:
                pass  # failed, or answered the wrong count: find the row(s) alone, below
        return list(await asyncio.gather(*(self.call(model, m) for m in messages), return_exceptions=True))

    async def call_many(self, models: Sequence[ModelNode], message: pb.Message) -> list[Outcome]:
        """Runs a co-located run of model nodes in order, as a group replica does."""
        from modelweave.group_calls import run_members  # it imports the executor, as this module does

        members = [(m.name, self._produces[m.name], self.adapters[m.name]) for m in models]
        if any(adapter.blocking for _, _, adapter in members):
            return await asyncio.to_thread(run_members, members, message, request_deadline.get())
        return run_members(members, message, request_deadline.get())
