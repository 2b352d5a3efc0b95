"""The drawing graph: the one structure both pictures of a graph are made from.

A :class:`~modelweave.checker.CheckedGraph` is a tree of nodes; a picture needs the
flow: which box hands its message to which. :func:`build_drawing` walks the spec
and emits boxes (model calls, route decisions, parallel fork and join, cache
entries) and typed edges, so that every branch of a route or parallel rejoins the
next step of the enclosing chain, a fallback is an alternative that rejoins too, a
validate loop is a back edge from the validator to its target, and a cache hit
bypasses the cached body. Mermaid text and the rendered image both come from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from modelweave.checker import CheckedGraph, NodeInfo
from modelweave.messages import PART_CLASSES
from modelweave.nodes import kind_of
from modelweave.spec import ModelNode, Node


@dataclass
class NodeStats:
    """Observed traffic of one node: share of requests that reach it and its mean latency."""

    share: float
    mean_ms: float


#: How an edge is drawn: the plain flow, a route branch, the error fallback, the
#: validate loop, the escalation after failed validation, the cache-hit bypass, and a
#: shadow's mirror (off the request path).
EdgeStyle = Literal["flow", "branch", "fallback", "retry", "escalate", "hit", "mirror"]

#: Kinds of boxes: node kinds (``node.kind``), plus "join" (a parallel's aggregate), "input" and "output".
BoxKind = str


@dataclass
class DrawNode:
    """One box of the picture."""

    id: str
    kind: BoxKind
    lines: list[str]
    stats: NodeStats | None = None


@dataclass
class DrawEdge:
    """One arrow of the picture; ``role`` names why it is taken (branch name, "fallback on error")."""

    source: str
    target: str
    style: EdgeStyle
    types: tuple[str, ...]
    role: str = ""
    share: float | None = None

    @property
    def back(self) -> bool:
        """True for the validate loop, which points upstream."""
        return self.style == "retry"

    def label(self) -> tuple[str, str]:
        """The label in two parts: the role (drawn bold) and the parts on the edge, with the traffic share."""
        text = ", ".join(self.types)
        if self.share is not None:
            text += f" · {self.share:.0%}"
        return self.role, text

    def label_text(self) -> str:
        """The label as one line of plain text."""
        role, text = self.label()
        return f"{role}: {text}" if role else text


@dataclass
class DrawingGraph:
    """Boxes and edges of one graph, with the cache bodies to draw as groups."""

    title: str
    nodes: dict[str, DrawNode] = field(default_factory=dict)
    edges: list[DrawEdge] = field(default_factory=list)
    #: Cache node id -> ids of the boxes of its body.
    groups: dict[str, list[str]] = field(default_factory=dict)


def ordered(types: frozenset[str] | set[str]) -> tuple[str, ...]:
    """Part type names in the envelope's order (Text first, Verdict last)."""
    rank = {name: i for i, name in enumerate(PART_CLASSES)}
    return tuple(sorted(types, key=lambda t: (rank.get(t, len(rank)), t)))


def model_label(info: NodeInfo, graph: CheckedGraph) -> list[str]:
    """Lines of a model box: name, adapter class, and where and how it runs (replicas, CPU/GPU, batching)."""
    node = info.node
    assert isinstance(node, ModelNode)
    impl = node.impl.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
    home = graph.layout.home[node.name]
    if home is None:
        return [node.name, impl, graph.layout.placement(node.name)]
    d = graph.layout.deployments[home].settings
    if d.autoscaling_config:
        replicas = f"{d.autoscaling_config.min_replicas}-{d.autoscaling_config.max_replicas} replicas"
    else:
        n = d.num_replicas or 1
        replicas = f"{n} replica" + ("s" if n != 1 else "")
    where = [replicas, f"{d.ray_actor_options.num_cpus:g} CPU"]
    if d.ray_actor_options.num_gpus:
        where.append(f"{d.ray_actor_options.num_gpus:g} GPU")
    if d.batching:
        where.append(f"batch {d.batching.max_batch_size}")
    if graph.layout.deployments[home].group:
        where.append(f"group {home}")
    return [node.name, impl, ", ".join(where)]


@dataclass
class Pending:
    """An edge whose source is known and whose target is the next box the flow reaches (kinds' ``draw``)."""

    source: str
    types: frozenset[str]
    style: EdgeStyle = "flow"
    role: str = ""
    share: float | None = None


def build_drawing(graph: CheckedGraph, stats: dict[str, NodeStats] | None = None) -> DrawingGraph:
    """The drawing graph of ``graph``, annotated with ``stats`` (by node path) when given."""
    builder = DrawingBuilder(graph, stats or {})
    spec = graph.spec
    inputs = graph.nodes[f"{spec.name}/{spec.flow.name}"].available_in
    builder.box("input", "input", ["input", ", ".join(ordered(inputs))])
    _, exits = builder.enter(spec.flow, f"{spec.name}/{spec.flow.name}",
                             [Pending("input", inputs, share=1.0 if stats else None)])
    builder.box("output", "output", ["output", ", ".join(ordered(graph.output_types))])
    builder.connect(exits, "output")
    return builder.drawing


class DrawingBuilder:
    """Builds a :class:`DrawingGraph`; each node kind draws its inside with it (``NodeKind.draw``)."""

    def __init__(self, graph: CheckedGraph, stats: dict[str, NodeStats]) -> None:
        self.graph = graph
        self.stats = stats
        n_deployments = len(graph.layout.deployments)
        self.drawing = DrawingGraph(
            title=f"{graph.spec.name}: {len(graph.models)} model nodes, {n_deployments} model deployments")

    def box(self, node_id: str, kind: BoxKind, lines: list[str], path: str | None = None) -> str:
        """Adds a box (with the stats of ``path`` when known); returns its id."""
        st = self.stats.get(path) if path else None
        if st is not None:
            lines = [*lines, f"{st.share:.0%} · {st.mean_ms:.1f} ms"]
        self.drawing.nodes[node_id] = DrawNode(node_id, kind, lines, st)
        return node_id

    def share(self, path: str) -> float | None:
        """Observed share of requests reaching ``path`` (None without stats)."""
        st = self.stats.get(path)
        return None if st is None else st.share

    def rest(self, path: str, node: Node, *others: Node | None) -> float | None:
        """The share through ``node`` that goes on, less what its fallback (or ``others``) took."""
        share = self.share(path)
        if share is None:
            return None
        for other in (node.fallback, *others):
            if other is not None:
                share -= self.share(f"{path}/{other.name}") or 0.0
        return max(0.0, share)

    def connect(self, pending: list[Pending], target: str) -> None:
        """Ends every pending edge at box ``target``."""
        for p in pending:
            self.drawing.edges.append(DrawEdge(p.source, target, p.style, ordered(p.types), p.role, p.share))

    def enter(self, node: Node, path: str, pending: list[Pending]) -> tuple[str, list[Pending]]:
        """Draws ``node`` reached by ``pending``; returns its entry box and the edges leaving it."""
        info = self.graph.nodes[path]
        kind = kind_of(node)
        # Kinds without a box of their own (chain, validate) need one to hang a fallback on.
        boxed = node.fallback is not None or kind.boxed
        entry: str | None = None
        if boxed:
            entry = self.box(path, node.kind, kind.draw_lines(node, info, self.graph), path)
            self.connect(pending, entry)
            pending = [Pending(entry, info.available_in, share=self.share(path))]
        first, exits = kind.draw(self, node, path, info, pending, entry)
        if node.fallback is not None:
            assert entry is not None
            fb_path = f"{path}/{node.fallback.name}"
            _, fb_exits = self.enter(node.fallback, fb_path, [
                Pending(entry, info.available_in, "fallback", "fallback on error", self.share(fb_path))])
            exits += fb_exits
        return first, exits
