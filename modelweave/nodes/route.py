"""``route``: conditional branching on message fields or a router model's label, with feedback."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from google.protobuf.message import Message as ProtoMessage
from pydantic import Field, model_validator

from modelweave.conditions import evaluate, read_field
from modelweave.errors import GraphSpecError
from modelweave.fields import check_condition
from modelweave.messages import full_name
from modelweave.nodes.base import DictSlot, NodeKind, TypeRule
from modelweave.nodes.model import ModelNode
from modelweave.spec_base import AdaptiveValue, Condition, NodeBase, _Strict
from modelweave.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    from modelweave.checker import CheckedGraph, NodeInfo, Walker
    from modelweave.draw_graph import DrawingBuilder, Pending
    from modelweave.executor import Executor
    from modelweave.layout import Alt, Layout
    from modelweave.spec import Node
    from modelweave.trace import RequestContext


class RouteRule(_Strict):
    """Send to ``branch`` when all conditions (or any, with ``match: any``) hold."""

    branch: str
    when: list[Condition] = Field(..., min_length=1)
    match: Literal["all", "any"] = "all"


class ChangeFeedback(_Strict):
    """Cross-request feedback from what a route branch did.

    After a branch runs, ``field`` is compared with its value before the branch: when the
    branch changed it (e.g. the expensive model overturned the cheap model's label) the
    state moves by ``on_changed``, otherwise by ``on_unchanged``. With ``+0.01`` / ``-0.002``
    an escalation threshold settles where about one escalation in six changes the answer.
    """

    state: str
    field: str = "classification.label"
    on_changed: float = 0.0
    on_unchanged: float = 0.0
    branches: list[str] | None = Field(None, description="branches it applies to; default: all non-null")


class RouteNode(NodeBase):
    """Conditional branching on message fields or on a router model's label."""

    kind: Literal["route"] = "route"
    router: ModelNode | None = Field(None, description="model whose Classification label picks the branch")
    rules: list[RouteRule] = []
    branches: dict[str, Node | None] = Field(
        ..., min_length=1, description="branch name -> flow; null passes the message through unchanged"
    )
    default: str = Field(..., description="branch taken when no rule matches")
    feedback: list[ChangeFeedback] = []

    @model_validator(mode="after")
    def _branches_exist(self) -> RouteNode:
        for i, fb in enumerate(self.feedback):
            for name in fb.branches or []:
                if name not in self.branches:
                    raise ValueError(f"feedback[{i}].branches: {name!r} is not one of {sorted(self.branches)}")
                if self.branches[name] is None:  # it runs nothing, so it changes nothing to compare
                    raise ValueError(f"feedback[{i}].branches: {name!r} is a pass-through (null) branch")
        if self.default not in self.branches:
            raise ValueError(f"default branch {self.default!r} is not one of {sorted(self.branches)}")
        for i, rule in enumerate(self.rules):
            if rule.branch not in self.branches:
                raise ValueError(f"rules[{i}].branch {rule.branch!r} is not one of {sorted(self.branches)}")
        if self.router is None and not self.rules and len(self.branches) > 1:
            raise ValueError("a route needs 'rules' or a 'router' model")
        return self


class RouteKind(NodeKind):
    """Type rule: conditions must name fields available after the router; what every branch leaves is the output."""

    kind = "route"
    spec = RouteNode
    shape = ('{{"', '"}}')
    colour = ("#fef3c7", "#b45309")
    hexagon = True

    def children(self, node: RouteNode) -> Iterator[tuple[str, Node]]:
        if node.router is not None:
            yield "router", node.router
        for label, branch in node.branches.items():
            if branch is not None:
                yield label, branch

    def dict_children(self, data: dict[str, Any]) -> Iterator[DictSlot]:
        if data.get("router"):
            yield "router", data, "router"
        for key, value in data["branches"].items():
            if value is not None:
                yield "branches", data["branches"], key

    def ablation(self, data: dict[str, Any]) -> tuple[dict[str, Any] | None, str] | None:
        return data["branches"][data["default"]], f"always the default branch {data['default']!r}"

    def adaptive_values(self, node: RouteNode) -> list[AdaptiveValue]:
        return [cond.value_from for rule in node.rules for cond in rule.when if cond.value_from is not None]

    def feedback_updates(self, node: RouteNode) -> list[tuple[str, str | None]]:
        return [(fb.state, fb.field) for fb in node.feedback]

    def check(self, walker: Walker, node: RouteNode, path: str, available: frozenset[str],
              info: NodeInfo) -> TypeRule:
        writes: set[str] = set()
        reads: set[str] = set()
        route_input = available
        if node.router is not None:
            route_input = walker.walk(node.router, path, available, path, "router")
            r = walker.checked.info(node.router)
            if r.produces != "Classification":
                raise GraphSpecError(
                    f"{r.path}: a router model must produce {full_name('Classification')}, "
                    f"not {full_name(r.produces)}"
                )
            writes |= r.writes
            reads |= r.reads
        for i, rule in enumerate(node.rules):
            for j, cond in enumerate(rule.when):
                # Parts the router just produced are not reads of the route's input.
                reads |= check_condition(cond, route_input, f"{path}: rules[{i}].when[{j}]") - (
                    route_input - available
                )
        outs = []
        for label, branch in node.branches.items():
            if branch is None:  # pass-through branch
                outs.append(route_input)
                continue
            outs.append(walker.walk(branch, path, route_input, path, label))
            b = walker.checked.info(branch)
            writes |= b.writes
            reads |= b.reads - (route_input - available)
        return frozenset.intersection(*outs), writes, reads

    async def run(self, ex: Executor, node: RouteNode, msg: pb.Message, ctx: RequestContext, path: str,
                  attempt: int) -> pb.Message:
        start = time.monotonic()
        if node.router is not None:
            msg = await ex.run_node(node.router, msg, ctx, path, attempt)
        chosen, reason = choose_branch(node, msg, await read_thresholds(ex, node))
        ctx.record(pb.Span(node=path, kind="route", attempt=attempt, start_ms=ctx.offset_ms(start), route=chosen,
                           detail=reason, latency_ms=(time.monotonic() - start) * 1000.0))
        branch = node.branches[chosen]
        if branch is None:
            return msg
        before = watched_fields(node, chosen, msg)
        out = await ex.run_node(branch, msg, ctx, path, attempt)
        await route_feedback(ex, node, chosen, before, out, ctx, path, attempt)
        return out

    def draw_lines(self, node: RouteNode, info: NodeInfo, graph: CheckedGraph) -> list[str]:
        how = f"route by {node.router.name}" if node.router else "route"
        return [node.name, how + (", adaptive" if node.feedback else "")]

    def draw(self, builder: DrawingBuilder, node: RouteNode, path: str, info: NodeInfo, pending: list[Pending],
             entry: str | None) -> tuple[str, list[Pending]]:
        from modelweave.draw_graph import Pending

        assert entry is not None
        route_in = info.available_in
        if node.router is not None:
            r_path = f"{path}/{node.router.name}"
            _, pending = builder.enter(node.router, r_path, [
                Pending(entry, route_in, role="router", share=builder.share(r_path))])
            route_in = route_in | {builder.graph.nodes[r_path].produces}
        roles = {name: f"{name} (default)" if name == node.default else name for name in node.branches}
        return entry, draw_branches(builder, path, pending[0].source, route_in, node.branches, roles)

    def hop_alternatives(self, node: RouteNode, layout: Layout, limit: int, alts: Callable[[Node], list[Alt]],
                         product: Callable[[list[list[Alt]], int], list[Alt]]) -> list[Alt]:
        head: list[Alt] = alts(node.router) if node.router is not None else [((), ())]
        tails: list[Alt] = []
        for label, branch in node.branches.items():
            for choices, hops in (alts(branch) if branch is not None else [((), ())]):
                tails.append(((f"{node.name}={label}", *choices), hops))
        return product([head, tails], limit)


async def read_thresholds(ex: Executor, node: RouteNode) -> dict[str, float]:
    """The current value of every feedback variable the route's rules compare against."""
    return {cond.value_from.state: await ex.threshold(cond.value_from)
            for rule in node.rules for cond in rule.when if cond.value_from is not None}


def choose_branch(node: RouteNode, msg: pb.Message, thresholds: dict[str, float]) -> tuple[str, str]:
    """The branch a route takes for ``msg`` and why (the route span's ``detail``).

    Args:
        thresholds: Values of the adaptive thresholds, by state (:func:`read_thresholds`).
    """
    for i, rule in enumerate(node.rules):
        tests = []
        adaptive = []  # "state=value" of the adaptive thresholds this rule read, for the trace
        for cond in rule.when:
            threshold = None
            if cond.value_from is not None:
                threshold = thresholds[cond.value_from.state]
                adaptive.append(f"{cond.value_from.state}={threshold:.3f}")
            tests.append(evaluate(cond, msg, threshold))
        if (all(tests) if rule.match == "all" else any(tests)):
            reason = f"rules[{i}]"
            if adaptive:
                reason += f" ({', '.join(adaptive)})"
            return rule.branch, reason
    if node.router is not None and msg.classification.label in node.branches:
        return msg.classification.label, f"router label {msg.classification.label!r}"
    return node.default, "default"


def _watched(node: RouteNode, chosen: str) -> list[ChangeFeedback]:
    """The route's feedback entries that apply when it takes branch ``chosen``."""
    return [fb for fb in node.feedback if fb.branches is None or chosen in fb.branches]


def watched_fields(node: RouteNode, chosen: str, msg: pb.Message) -> list[Any]:
    """The fields the branch's feedback watches, as they are before the branch runs."""
    return [_frozen(read_field(msg, fb.field)) for fb in _watched(node, chosen)]


def _frozen(value: Any) -> Any:
    """A copy of a field's value that the branch cannot change: message values and repeated
    fields are live views of the envelope, which the branch overwrites in place."""
    if isinstance(value, ProtoMessage):
        return value.SerializeToString(deterministic=True)
    if isinstance(value, str | bytes | int | float | bool) or value is None:
        return value
    return [_frozen(v) for v in value]  # a repeated field


async def route_feedback(ex: Executor, node: RouteNode, chosen: str, before: list[Any], out: pb.Message,
                         ctx: RequestContext, path: str, attempt: int) -> None:
    """Moves the feedback variables by whether the branch changed the watched fields."""
    for fb, old in zip(_watched(node, chosen), before, strict=True):
        changed = _frozen(read_field(out, fb.field)) != old
        delta = fb.on_changed if changed else fb.on_unchanged
        value = await ex.adjust(fb.state, delta)
        if value is not None:
            ctx.record(pb.Span(node=path, kind="feedback", attempt=attempt, start_ms=ctx.elapsed_ms(),
                               route=chosen, detail=f"{fb.state} {delta:+.4f} -> {value:.4f} "
                               f"({fb.field} {'changed' if changed else 'unchanged'})"))


def draw_branches(builder: DrawingBuilder, path: str, source: str, available: frozenset[str],
                  branches: dict[str, Node | None], roles: dict[str, str]) -> list[Pending]:
    """Draws alternative branches from box ``source``; a null (pass-through) branch is an edge that rejoins."""
    from modelweave.draw_graph import Pending

    exits: list[Pending] = []
    taken = 0.0
    for name, branch in branches.items():
        if branch is None:
            continue
        b_path = f"{path}/{branch.name}"
        b_share = builder.share(b_path)
        taken += b_share or 0.0
        _, b_exits = builder.enter(branch, b_path, [Pending(source, available, "branch", roles[name], b_share)])
        exits += b_exits
    for name, branch in branches.items():
        if branch is None:  # pass-through: the node's own box rejoins the flow
            share = builder.share(path)
            exits.append(Pending(source, available, "branch", roles[name],
                                 None if share is None else max(0.0, share - taken)))
    return exits
