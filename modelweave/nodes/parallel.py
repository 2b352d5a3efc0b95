"""``parallel``: branches run concurrently on copies of the message, then one ``aggregate`` combines them."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from modelweave.errors import GraphSpecError, ModelError, ModelweaveError
from modelweave.fields import fmt_types
from modelweave.messages import clone, full_name, part_name
from modelweave.nodes.base import DictSlot, NodeKind, TypeRule
from modelweave.spec_base import NodeBase, _Strict
from modelweave.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    from modelweave.checker import CheckedGraph, NodeInfo, Walker
    from modelweave.draw_graph import DrawingBuilder, Pending
    from modelweave.executor import Executor
    from modelweave.spec import Node
    from modelweave.trace import RequestContext

#: Aggregation strategies that read one part type from every branch.
_AGGREGATE_PARTS = {"vote": "Classification", "mean": "Classification", "concat": "Generation"}


class AggregateSpec(_Strict):
    """How a parallel node combines its branches."""

    strategy: Literal["vote", "mean", "first_valid", "concat", "merge", "custom"]
    function: str | None = Field(None, description="import path, for strategy=custom")
    produces: str | None = Field(None, description="part type written by a custom function")
    weights: list[float] | None = None
    min_successful: int | None = Field(None, ge=1, description="branches that must succeed; default all")
    separator: str = "\n"

    @model_validator(mode="after")
    def _custom_needs_function(self) -> AggregateSpec:
        if self.strategy == "custom" and not (self.function and self.produces):
            raise ValueError("strategy 'custom' needs 'function' and 'produces'")
        if self.strategy != "custom" and self.function:
            raise ValueError("'function' is only used with strategy 'custom'")
        if self.weights is not None and (
                not all(math.isfinite(w) and w >= 0 for w in self.weights) or not sum(self.weights) > 0):
            # A negative weight turns a score into a negative probability; all zero leaves the
            # label to branch order; NaN makes the confidence NaN, which no route rule matches.
            raise ValueError(f"aggregate.weights must be finite, >= 0 and not all 0, got {self.weights}")
        if self.strategy == "merge" and (self.weights is not None or self.min_successful is not None):
            # Every branch contributes its own parts: a missing branch would leave a hole that
            # later nodes read as "not produced", so all of them must succeed, none outweighs another.
            raise ValueError("strategy 'merge' takes no weights and no min_successful (every branch must succeed)")
        return self


class ParallelNode(NodeBase):
    """Runs branches concurrently on copies of the message, then aggregates."""

    kind: Literal["parallel"] = "parallel"
    branches: list[Node] = Field(..., min_length=2)
    aggregate: AggregateSpec

    @model_validator(mode="after")
    def _weights_match(self) -> ParallelNode:
        w = self.aggregate.weights
        if w is not None and len(w) != len(self.branches):
            raise ValueError(f"aggregate.weights has {len(w)} entries for {len(self.branches)} branches")
        if self.aggregate.min_successful and self.aggregate.min_successful > len(self.branches):
            raise ValueError("aggregate.min_successful exceeds the number of branches")
        return self


class ParallelKind(NodeKind):
    """Type rule: vote/mean/concat need their part from every branch; first_valid keeps what all share;
    merge needs branches that write disjoint part types and keeps what each one writes."""

    kind = "parallel"
    spec = ParallelNode
    shape = ('[["', '"]]')
    colour = ("#ffe4e6", "#be123c")

    def children(self, node: ParallelNode) -> Iterator[tuple[str, Node]]:
        return ((f"branch {i}", b) for i, b in enumerate(node.branches))

    def dict_children(self, data: dict[str, Any]) -> Iterator[DictSlot]:
        return (("branches", data["branches"], i) for i in range(len(data["branches"])))

    def ablation(self, data: dict[str, Any]) -> tuple[dict[str, Any] | None, str] | None:
        return data["branches"][0], f"only branch {data['branches'][0]['name']!r}"

    def check(self, walker: Walker, node: ParallelNode, path: str, available: frozenset[str],
              info: NodeInfo) -> TypeRule:
        outs = []
        writes: set[str] = set()
        reads: set[str] = set()
        for label, branch in self.children(node):
            outs.append(walker.walk(branch, path, available, path, label))
            b = walker.checked.info(branch)
            writes |= b.writes
            reads |= b.reads
        agg = node.aggregate
        if agg.strategy in _AGGREGATE_PARTS:
            needed = _AGGREGATE_PARTS[agg.strategy]
            for branch, out in zip(node.branches, outs, strict=True):
                if needed not in out:
                    raise GraphSpecError(
                        f"{path}/{branch.name}: aggregate '{agg.strategy}' needs {full_name(needed)} from "
                        f"every branch, but this branch produces {fmt_types(out)}"
                    )
            return available | {needed}, {needed}, reads
        if agg.strategy == "merge":
            owner: dict[str, str] = {}
            for branch in node.branches:
                for part in sorted(walker.checked.info(branch).writes):
                    if part in owner:
                        raise GraphSpecError(
                            f"{path}: aggregate 'merge' needs branches that write different part types, but "
                            f"{owner[part]!r} and {branch.name!r} both write {full_name(part)}")
                    owner[part] = branch.name
            # Each branch ran on a copy of this node's input: a part one branch reads is the input's,
            # never another branch's output (e.g. classify the original text while it is redacted).
            return available | writes, writes, reads
        common = frozenset.intersection(*outs)
        if agg.strategy == "custom":
            try:
                produced = part_name(agg.produces or "")
            except GraphSpecError as exc:
                raise GraphSpecError(f"{path}: aggregate.produces: {exc.message}") from None
            from modelweave.adapters.base import import_object

            try:
                import_object(agg.function or "")
            except GraphSpecError as exc:
                raise GraphSpecError(f"{path}: aggregate.function: {exc.message}") from None
            # aggregate() builds the output from the node's input plus the produced part;
            # branch outputs are not carried over.
            return available | {produced}, {produced}, reads
        return common, writes, reads  # first_valid: one whole branch's output

    def draw_lines(self, node: ParallelNode, info: NodeInfo, graph: CheckedGraph) -> list[str]:
        return [node.name, f"parallel x{len(node.branches)}"]

    def draw(self, builder: DrawingBuilder, node: ParallelNode, path: str, info: NodeInfo, pending: list[Pending],
             entry: str | None) -> tuple[str, list[Pending]]:
        from modelweave.draw_graph import Pending

        assert entry is not None
        agg = node.aggregate
        weights = "/".join(f"{w:g}" for w in agg.weights) if agg.weights else ""
        join = builder.box(f"{path}#join", "join", [" ".join(s for s in (agg.strategy, weights) if s)])
        for branch in node.branches:
            b_path = f"{path}/{branch.name}"
            _, exits = builder.enter(branch, b_path, [Pending(entry, info.available_in, share=builder.share(b_path))])
            builder.connect(exits, join)
        return entry, [Pending(join, info.available_out, share=builder.rest(path, node))]

    async def run(self, ex: Executor, node: ParallelNode, msg: pb.Message, ctx: RequestContext, path: str,
                  attempt: int) -> pb.Message:
        start = time.monotonic()
        span = pb.Span(node=path, kind="parallel", attempt=attempt, start_ms=ctx.elapsed_ms())
        outcomes = await asyncio.gather(
            *(ex.run_node(b, clone(msg), ctx, path, attempt) for b in node.branches), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
        return join_branches(ex, node, msg, list(outcomes), ctx, path, span, start)


def join_branches(ex: Executor, node: ParallelNode, msg: pb.Message, outcomes: list[Any], ctx: RequestContext,
                  path: str, span: pb.Span, start: float) -> pb.Message:
    """Aggregates the branches' outcomes (an envelope or the exception of each) into one envelope.

    Shared by the row-by-row executor and the batch stage's columnar runner; records ``span``.

    Raises:
        BaseException: the first branch error, when fewer branches succeeded than needed.
        ModelweaveError: the aggregation failed.
    """
    from modelweave.aggregate import aggregate

    results: list[pb.Message | None] = []
    errors: list[BaseException] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            errors.append(outcome)
            results.append(None)
        else:
            results.append(outcome)
    needed = node.aggregate.min_successful or len(node.branches)
    succeeded = len(node.branches) - len(errors)
    if succeeded < needed:
        first = errors[0]
        span.error = first.status.value if isinstance(first, ModelweaveError) else ModelError.status.value
        span.detail = f"{succeeded}/{len(node.branches)} branches succeeded, {needed} needed"
        span.latency_ms = (time.monotonic() - start) * 1000.0
        ctx.record(span)
        raise first
    weights = node.aggregate.weights or [1.0] * len(node.branches)
    try:
        writes = ([ex.graph.info(b).writes for b in node.branches]
                  if node.aggregate.strategy == "merge" else None)
        out, detail = aggregate(node.aggregate, msg, results, weights, writes=writes)
    except ModelweaveError as exc:
        exc.node = exc.node or path
        span.error = exc.status.value
        span.detail = exc.message[:300]
        span.latency_ms = (time.monotonic() - start) * 1000.0
        ctx.record(span)
        raise
    span.detail = detail + (f"; {len(errors)} branch(es) failed" if errors else "")
    span.latency_ms = (time.monotonic() - start) * 1000.0
    ctx.record(span)
    return out
