"""Static type-checking of a graph: every edge must carry the parts the next node reads.

The checker walks the flow with the set of part types available at each point
(starting from the graph's ``input``), imports each model's adapter class to read
its signature (without loading weights), and refuses the graph with an error that
names the node path and the mismatch. It also returns the facts the executor and
the Serve builder need (model nodes by name, paths, per-node types).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modelweave.adapters.base import import_object
from modelweave.errors import GraphSpecError
from modelweave.fields import field_part, fmt_types
from modelweave.messages import full_name, part_name
from modelweave.nodes import kind_of
from modelweave.spec import AdaptiveValue, GraphSpec, ModelNode, Node

if TYPE_CHECKING:
    from modelweave.layout import Layout


@dataclass
class NodeInfo:
    """What the checker learned about one node."""

    path: str
    node: Node
    available_in: frozenset[str]
    available_out: frozenset[str]
    consumes: tuple[str, ...] = ()
    produces: str = ""
    #: Part types this node (or anything inside it) may write.
    writes: frozenset[str] = frozenset()
    #: Part types read from the node's input that are not produced inside it.
    reads: frozenset[str] = frozenset()
    #: Model nodes: a call whose replica died may be retried (adapter or node says so).
    idempotent: bool = False
    #: Model nodes: the adapter does real CPU work (runs in a thread); False for rules and glue.
    blocking: bool = True


@dataclass
class Edge:
    """A typed edge between two node paths."""

    source: str
    target: str
    types: frozenset[str]
    label: str = ""


@dataclass
class CheckedGraph:
    """A graph that passed type-checking, with per-node facts."""

    spec: GraphSpec
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    models: dict[str, ModelNode] = field(default_factory=dict)
    model_paths: dict[str, str] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    output_types: frozenset[str] = frozenset()
    #: Feedback variables declared by adaptive route conditions, by state name.
    states: dict[str, AdaptiveValue] = field(default_factory=dict)
    #: Where each model node runs (own deployment, group, ingress); set by :func:`check_graph`.
    placement: Layout | None = None

    @property
    def layout(self) -> Layout:
        """Where each model node runs (see :mod:`modelweave.layout`)."""
        if self.placement is None:
            raise GraphSpecError(f"graph {self.spec.name!r} has no layout: build it with check_graph")
        return self.placement

    def info(self, node: Node) -> NodeInfo:
        """Facts about a node object of this graph."""
        return self._by_id[id(node)]

    def __post_init__(self) -> None:
        self._by_id: dict[int, NodeInfo] = {}


def check_graph(spec: GraphSpec) -> CheckedGraph:
    """Type-checks ``spec``.

    Raises:
        GraphSpecError: naming the node path and the mismatch.
    """
    checked = CheckedGraph(spec=spec)
    try:
        available = frozenset(part_name(t) for t in spec.input)
    except GraphSpecError as exc:
        raise GraphSpecError(f"graph {spec.name!r} input: {exc}") from None
    if not available:
        raise GraphSpecError(f"graph {spec.name!r}: 'input' must name at least one message type")
    for i, hook in enumerate(spec.prepare):  # else `check` said ok and `prepare` failed on it
        try:
            if not callable(import_object(hook)):
                raise GraphSpecError(f"{hook!r} is not callable")
        except GraphSpecError as exc:
            raise GraphSpecError(f"graph {spec.name!r} prepare[{i}]: {exc.message}") from None
    walker = Walker(checked)
    out = walker.walk(spec.flow, spec.name, available, "input")
    for wanted in spec.output:
        try:
            short = part_name(wanted)
        except GraphSpecError as exc:
            raise GraphSpecError(f"graph {spec.name!r} output: {exc}") from None
        if short not in out:
            raise GraphSpecError(
                f"graph {spec.name!r} declares output {full_name(short)} but the flow only guarantees "
                f"{fmt_types(out)}"
            )
    checked.output_types = out
    _check_feedback(checked)
    from modelweave.layout import plan_layout  # imports this module's types

    checked.placement = plan_layout(checked)
    return checked


def _check_feedback(checked: CheckedGraph) -> None:
    """Every feedback update must target a state some node declares (e.g. an adaptive route condition)."""
    for info in checked.nodes.values():
        for var in kind_of(info.node).adaptive_values(info.node):
            seen = checked.states.get(var.state)
            if seen is not None and seen != var:
                raise GraphSpecError(f"{info.path}: state {var.state!r} is declared twice with different bounds")
            checked.states[var.state] = var
    for info in checked.nodes.values():
        # (state, field compared after the node) per feedback entry; validate feedback has no field.
        for i, (state, field_path) in enumerate(kind_of(info.node).feedback_updates(info.node)):
            if state not in checked.states:
                raise GraphSpecError(
                    f"{info.path}: feedback[{i}].state {state!r} is not declared by any "
                    "route condition's value_from"
                )
            if field_path is not None:
                field_part(field_path, info.available_out, f"{info.path}: feedback[{i}].field")


class Walker:
    """Walks the flow with the part types available at each point; kinds call :meth:`walk` on children."""

    def __init__(self, checked: CheckedGraph) -> None:
        self.checked = checked

    def walk(self, node: Node, parent: str, available: frozenset[str], source: str, label: str = "") -> frozenset[str]:
        """Checks ``node`` (under ``parent``) reached from ``source`` with ``available`` parts; returns its output."""
        path = f"{parent}/{node.name}"
        if path in self.checked.nodes:
            raise GraphSpecError(f"{path}: two sibling nodes are both named {node.name!r}")
        self.checked.edges.append(Edge(source, path, available, label))
        info = NodeInfo(path=path, node=node, available_in=available, available_out=available)
        self.checked.nodes[path] = info
        self.checked._by_id[id(node)] = info
        out, writes, reads = kind_of(node).check(self, node, path, available, info)
        if node.fallback is not None:
            fb_out = self.walk(node.fallback, path, available, path, "fallback")
            fb = self.checked.info(node.fallback)
            out = out & fb_out
            writes = writes | fb.writes
            reads = reads | fb.reads
        info.available_out, info.writes, info.reads = out, frozenset(writes), frozenset(reads)
        return out
