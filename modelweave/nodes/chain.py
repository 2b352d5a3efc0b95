"""``chain``: steps in sequence; each step reads what the previous ones produced."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from modelweave.nodes.base import DictSlot, NodeKind, TypeRule
from modelweave.spec_base import NodeBase

if TYPE_CHECKING:
    from modelweave.checker import NodeInfo, Walker
    from modelweave.draw_graph import DrawingBuilder, Pending
    from modelweave.executor import Executor
    from modelweave.layout import Alt, Layout
    from modelweave.spec import Node
    from modelweave.trace import RequestContext
    from modelweave.v1 import messages_pb2 as pb


class ChainNode(NodeBase):
    """Runs steps in sequence; each step reads what the previous ones produced."""

    kind: Literal["chain"] = "chain"
    steps: list[Node] = Field(..., min_length=1)


class ChainKind(NodeKind):
    """Type rule: parts accumulate along the steps; reads are what a step needs that no earlier step wrote."""

    kind = "chain"
    spec = ChainNode
    shape = ('(["', '"])')
    colour = ("#f1f5f9", "#475569")
    boxed = False

    def children(self, node: ChainNode) -> Iterator[tuple[str, Node]]:
        return (("", step) for step in node.steps)

    def dict_children(self, data: dict[str, Any]) -> Iterator[DictSlot]:
        return (("steps", data["steps"], i) for i in range(len(data["steps"])))

    def check(self, walker: Walker, node: ChainNode, path: str, available: frozenset[str],
              info: NodeInfo) -> TypeRule:
        writes: set[str] = set()
        reads: set[str] = set()
        source = path
        current = available
        for step in node.steps:
            current = walker.walk(step, path, current, source)
            step_info = walker.checked.info(step)
            reads |= step_info.reads - writes
            writes |= step_info.writes
            source = step_info.path
        return current, writes, reads

    async def run(self, ex: Executor, node: ChainNode, msg: pb.Message, ctx: RequestContext, path: str,
                  attempt: int) -> pb.Message:
        i = 0
        while i < len(node.steps):
            run = ex.runs.get(id(node.steps[i]))
            if run is None:
                msg = await ex.run_node(node.steps[i], msg, ctx, path, attempt)
                i += 1
                continue
            from modelweave.group_calls import run_group  # it imports the executor

            msg = await run_group(ex, run, msg, ctx, path, attempt)
            i += len(run)
        return msg

    def draw(self, builder: DrawingBuilder, node: ChainNode, path: str, info: NodeInfo, pending: list[Pending],
             entry: str | None) -> tuple[str, list[Pending]]:
        first = ""
        for step in node.steps:
            step_entry, pending = builder.enter(step, f"{path}/{step.name}", pending)
            first = first or step_entry
        return entry or first, pending

    def hop_alternatives(self, node: ChainNode, layout: Layout, limit: int, alts: Callable[[Node], list[Alt]],
                         product: Callable[[list[list[Alt]], int], list[Alt]]) -> list[Alt]:
        from modelweave.layout import Hop

        parts: list[list[Alt]] = []
        i = 0
        while i < len(node.steps):
            run = layout.runs.get(id(node.steps[i]))
            if run is not None:
                parts.append([((), (Hop(layout.home[run[0].name], tuple(m.name for m in run)),))])
                i += len(run)
            else:
                parts.append(alts(node.steps[i]))
                i += 1
        return product(parts, limit)
