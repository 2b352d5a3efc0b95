"""``split``: weighted traffic split between branches (A/B, canary), optionally sticky by a request field.

Each request takes one branch with probability proportional to its weight. With
``sticky: metadata.user`` (any envelope field) the choice is a keyed hash of that
field's value, so the same user always lands on the same branch while the weights
stay; a request without the field falls back to a random draw (and the trace says so).
Weights live in the graph, so changing them is a redeploy of the graph: Serve replaces
ingress replicas one by one and requests in flight finish on the old weights.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from modelweave.conditions import read_field
from modelweave.fields import field_part
from modelweave.nodes.base import DictSlot, NodeKind, TypeRule
from modelweave.spec_base import NodeBase
from modelweave.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    from modelweave.checker import CheckedGraph, NodeInfo, Walker
    from modelweave.draw_graph import DrawingBuilder, Pending
    from modelweave.executor import Executor
    from modelweave.layout import Alt, Layout
    from modelweave.spec import Node
    from modelweave.trace import RequestContext


class SplitNode(NodeBase):
    """Sends each request to one branch, with probability proportional to the branch's weight."""

    kind: Literal["split"] = "split"
    branches: dict[str, Node | None] = Field(
        ..., min_length=2, description="branch name -> flow; null passes the message through unchanged")
    weights: dict[str, float] = Field(..., description="branch name -> relative weight (>= 0), e.g. 90 / 10")
    sticky: str | None = Field(
        None, description="envelope field (e.g. metadata.user) whose value picks the branch by a keyed hash, "
                          "so the same value always takes the same branch")
    salt: str = Field("", description="changes which sticky values land on which branch (a new experiment)")

    @model_validator(mode="after")
    def _weights_cover_branches(self) -> SplitNode:
        if set(self.weights) != set(self.branches):
            missing = sorted(set(self.branches) - set(self.weights))
            extra = sorted(set(self.weights) - set(self.branches))
            raise ValueError(f"weights must name every branch exactly: missing {missing}, unknown {extra}")
        for name, w in self.weights.items():
            if w < 0 or w != w or w == float("inf"):
                raise ValueError(f"weights.{name} must be a finite number >= 0, got {w}")
        total = sum(self.weights.values())
        if total <= 0:
            raise ValueError("at least one weight must be > 0")
        if total == float("inf"):  # every share would read 0: all traffic to the last branch
            raise ValueError(f"weights must add up to a finite number, got {dict(self.weights)}")
        return self

    def cumulative(self) -> list[tuple[float, str]]:
        """(upper bound in [0, 1], branch) in branch order; zero-weight branches never match."""
        total = sum(self.weights.values())
        bounds, acc = [], 0.0
        for name in self.branches:
            acc += self.weights[name] / total
            bounds.append((acc, name))
        return bounds


def pick_branch(node: SplitNode, draw: float) -> str:
    """The branch a uniform ``draw`` in [0, 1) falls on (the last positive-weight branch at the top edge)."""
    last = next(name for name in reversed(list(node.branches)) if node.weights[name] > 0)
    for bound, name in node.cumulative():
        if draw < bound and node.weights[name] > 0:
            return name
    return last


def sticky_draw(salt: str, path: str, value: object) -> float:
    """A uniform number in [0, 1) fixed by (salt, node path, value): the same user, the same branch."""
    digest = hashlib.blake2b(f"{salt}\0{path}\0{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class SplitKind(NodeKind):
    """Type rule: what every branch leaves is the output (like a route); the sticky field must exist."""

    kind = "split"
    spec = SplitNode
    shape = ('{{"', '"}}')
    colour = ("#fef9c3", "#a16207")
    hexagon = True

    def children(self, node: SplitNode) -> Iterator[tuple[str, Node]]:
        for label, branch in node.branches.items():
            if branch is not None:
                yield f"{label} {node.weights[label]:g}", branch

    def dict_children(self, data: dict[str, Any]) -> Iterator[DictSlot]:
        for key, value in data["branches"].items():
            if value is not None:
                yield "branches", data["branches"], key

    def ablation(self, data: dict[str, Any]) -> tuple[dict[str, Any] | None, str] | None:
        heaviest = max(data["weights"], key=lambda name: data["weights"][name])
        return data["branches"][heaviest], f"always the heaviest branch {heaviest!r}"

    def check(self, walker: Walker, node: SplitNode, path: str, available: frozenset[str],
              info: NodeInfo) -> TypeRule:
        reads: set[str] = set()
        if node.sticky is not None:
            part, _ = field_part(node.sticky, available, f"{path}: sticky")
            reads |= {part} if part else set()
        writes: set[str] = set()
        outs = []
        for label, branch in node.branches.items():
            if branch is None:
                outs.append(available)
                continue
            outs.append(walker.walk(branch, path, available, path, f"{label} {node.weights[label]:g}"))
            b = walker.checked.info(branch)
            writes |= b.writes
            reads |= b.reads
        return frozenset.intersection(*outs), writes, reads

    async def run(self, ex: Executor, node: SplitNode, msg: pb.Message, ctx: RequestContext, path: str,
                  attempt: int) -> pb.Message:
        start = time.monotonic()
        chosen, detail = choose_split(node, msg, path)
        ctx.record(pb.Span(node=path, kind="split", attempt=attempt, start_ms=ctx.offset_ms(start), route=chosen,
                           detail=detail, latency_ms=(time.monotonic() - start) * 1000.0))
        branch = node.branches[chosen]
        return msg if branch is None else await ex.run_node(branch, msg, ctx, path, attempt)

    def draw_lines(self, node: SplitNode, info: NodeInfo, graph: CheckedGraph) -> list[str]:
        return [node.name, "split" + (f", sticky by {node.sticky}" if node.sticky else "")]

    def draw(self, builder: DrawingBuilder, node: SplitNode, path: str, info: NodeInfo, pending: list[Pending],
             entry: str | None) -> tuple[str, list[Pending]]:
        from modelweave.nodes.route import draw_branches

        assert entry is not None
        total = sum(node.weights.values())
        roles = {name: f"{name} {node.weights[name] / total:.0%}" for name in node.branches}
        return entry, draw_branches(builder, path, entry, info.available_in, node.branches, roles)

    def hop_alternatives(self, node: SplitNode, layout: Layout, limit: int, alts: Callable[[Node], list[Alt]],
                         product: Callable[[list[list[Alt]], int], list[Alt]]) -> list[Alt]:
        out: list[Alt] = []
        for label, branch in node.branches.items():
            if node.weights[label] <= 0:
                continue
            for choices, hops in (alts(branch) if branch is not None else [((), ())]):
                out.append(((f"{node.name}={label}", *choices), hops))
        return out[:limit]


def choose_split(node: SplitNode, msg: pb.Message, path: str) -> tuple[str, str]:
    """The branch a split sends ``msg`` to, and the span's detail (how it drew, the weights)."""
    how = "random"
    draw = random.random()
    if node.sticky is not None:
        value = read_field(msg, node.sticky)
        if value not in (None, ""):
            draw, how = sticky_draw(node.salt, path, value), f"sticky by {node.sticky}"
        else:
            how = f"random ({node.sticky} missing)"
    return pick_branch(node, draw), f"{how}; weights " + ", ".join(f"{k}={v:g}" for k, v in node.weights.items())
