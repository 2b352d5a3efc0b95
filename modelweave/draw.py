"""Pictures of a graph: Mermaid text and a PNG/SVG rendered with matplotlib.

Nodes are drawn by kind (model boxes show replicas and CPU/GPU), edges carry the
message types available on them, and with ``stats`` (from ``modelweave eval`` or a
live Prometheus scrape) edges also show the share of requests reaching the target
node and its mean latency.
"""

from __future__ import annotations

import math
import pathlib
import re
from collections import defaultdict
from dataclasses import dataclass

from modelweave.checker import CheckedGraph, NodeInfo
from modelweave.spec import CacheNode, ChainNode, ModelNode, Node, ParallelNode, RouteNode, ValidateNode


@dataclass
class NodeStats:
    """Observed traffic of one node."""

    share: float
    mean_ms: float


_SHAPES = {"model": ('["', '"]'), "chain": ('(["', '"])'), "parallel": ('[["', '"]]'), "route": ('{"', '"}'),
           "validate": ('{{"', '"}}'), "cache": ('[("', '")]'), "input": ('(("', '"))')}


def _label(info: NodeInfo, graph: CheckedGraph) -> list[str]:
    node = info.node
    lines = [node.name, node.kind]
    if isinstance(node, ModelNode):
        home = graph.layout.home[node.name]
        if home is None:
            return [node.name, node.impl.rsplit(":", 1)[-1].rsplit(".", 1)[-1], "in ingress"]
        d = graph.layout.deployments[home].settings
        replicas = (f"{d.autoscaling_config.min_replicas}-{d.autoscaling_config.max_replicas} replicas"
                    if d.autoscaling_config else f"{d.num_replicas or 1} replica(s)")
        res = f"{d.ray_actor_options.num_cpus:g} CPU"
        if d.ray_actor_options.num_gpus:
            res += f", {d.ray_actor_options.num_gpus:g} GPU"
        lines = [node.name, node.impl.rsplit(":", 1)[-1].rsplit(".", 1)[-1], f"{replicas}, {res}"]
        if d.batching:
            lines.append(f"batch {d.batching.max_batch_size}")
        if graph.layout.deployments[home].group:
            lines.append(f"group {home}")
    return lines


def _edge_label(types: frozenset[str], label: str, stats: NodeStats | None) -> str:
    parts = [label] if label else []
    parts.append(",".join(sorted(types)))
    if stats is not None:
        parts.append(f"{stats.share:.0%} · {stats.mean_ms:.1f} ms")
    return " | ".join(parts)


def to_mermaid(graph: CheckedGraph, stats: dict[str, NodeStats] | None = None) -> str:
    """Mermaid ``flowchart`` text of the graph."""
    stats = stats or {}
    ids = {"input": "input"}
    out = ["flowchart LR", '  input(("input"))']
    for i, (path, info) in enumerate(graph.nodes.items()):
        ids[path] = f"n{i}"
        left, right = _SHAPES[info.node.kind]
        text = "<br/>".join(s.replace('"', "'") for s in _label(info, graph))
        out.append(f"  n{i}{left}{text}{right}")
        out.append(f"  class n{i} {info.node.kind}")
    for edge in graph.edges:
        label = _edge_label(edge.types, edge.label, stats.get(edge.target)).replace('"', "'")
        out.append(f'  {ids[edge.source]} -->|"{label}"| {ids[edge.target]}')
    out += ["  classDef model fill:#dbeafe,stroke:#1d4ed8", "  classDef route fill:#fef3c7,stroke:#b45309",
            "  classDef validate fill:#dcfce7,stroke:#15803d", "  classDef cache fill:#f3e8ff,stroke:#7e22ce",
            "  classDef parallel fill:#ffe4e6,stroke:#be123c", "  classDef chain fill:#f1f5f9,stroke:#475569"]
    return "\n".join(out) + "\n"


_COLOURS = {"model": "#dbeafe", "route": "#fef3c7", "validate": "#dcfce7", "cache": "#f3e8ff",
            "parallel": "#ffe4e6", "chain": "#f1f5f9", "input": "#ffffff"}


def render_image(graph: CheckedGraph, path: str | pathlib.Path, stats: dict[str, NodeStats] | None = None) -> None:
    """Draws the graph as a left-to-right tree into ``path`` (.png or .svg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = stats or {}
    pos: dict[str, tuple[float, float]] = {"input": (0.0, 0.0)}
    spec = graph.spec
    size = _place(graph, spec.flow, spec.name, 1, 0, pos)
    pos = {k: (x * 2.6, -y * 1.1) for k, (x, y) in pos.items()}
    next_row = [float(size[1])]
    width = max(x for x, _ in pos.values()) + 3.5
    height = max(2.0, next_row[0] * 1.1)
    fig, ax = plt.subplots(figsize=(max(8.0, width * 0.75), max(3.0, height * 0.95 + 0.8)))
    ax.axis("off")
    for edge in graph.edges:
        (x0, y0), (x1, y1) = pos[edge.source], pos[edge.target]
        ax.annotate("", xy=(x1 - 0.95, y1), xytext=(x0 + 0.95, y0),
                    arrowprops={"arrowstyle": "->", "color": "#64748b", "lw": 0.8})
        node_stats = stats.get(edge.target)
        if node_stats is not None:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.12, f"{node_stats.share:.0%} · {node_stats.mean_ms:.1f} ms",
                    fontsize=6, color="#b91c1c", ha="center")
    for node, (x, y) in pos.items():
        info = graph.nodes.get(node)
        kind = info.node.kind if info else "input"
        text = "\n".join(_label(info, graph)) if info else "input"
        ax.text(x, y, text, ha="center", va="center", fontsize=6.5,
                bbox={"boxstyle": "round,pad=0.3", "fc": _COLOURS[kind], "ec": "#334155", "lw": 0.6})
    ax.set_xlim(-1.2, width - 1.5)
    ax.set_ylim(-next_row[0] * 1.1, 1)
    ax.set_title(f"{graph.spec.name}: {len(graph.models)} model nodes, {len(graph.layout.deployments)} model "
                 f"deployments", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=160)
    plt.close(fig)


def _place(graph: CheckedGraph, node: Node, parent: str, x: int, y: int,
           pos: dict[str, tuple[float, float]]) -> tuple[int, int]:
    """Grid layout: sequences run left to right, alternatives stack downwards; returns (cols, rows)."""
    path = f"{parent}/{node.name}"
    pos[path] = (float(x), float(y))
    w, h = 1, 1
    if isinstance(node, ChainNode):
        cx = x + 1
        for step in node.steps:
            sw, sh = _place(graph, step, path, cx, y, pos)
            cx, h = cx + sw, max(h, sh)
        w = cx - x
    elif isinstance(node, ParallelNode | RouteNode):
        alternatives: list[Node] = list(node.branches) if isinstance(node, ParallelNode) else [
            *([node.router] if node.router else []), *(b for b in node.branches.values() if b is not None)]
        cy, bw = y, 0
        for branch in alternatives:
            sw, sh = _place(graph, branch, path, x + 1, cy, pos)
            cy, bw = cy + sh, max(bw, sw)
        w, h = 1 + bw, max(1, cy - y)
    elif isinstance(node, ValidateNode):
        tw, th = _place(graph, node.target, path, x + 1, y, pos)
        vw, vh = _place(graph, node.validator, path, x + 1 + tw, y, pos)
        w, h = 1 + tw + vw, max(th, vh)
        if node.escalate is not None:
            ew, eh = _place(graph, node.escalate, path, x + 1, y + h, pos)
            w, h = max(w, 1 + ew), h + eh
    elif isinstance(node, CacheNode):
        bw, bh = _place(graph, node.body, path, x + 1, y, pos)
        w, h = 1 + bw, bh
    if node.fallback is not None:
        fw, fh = _place(graph, node.fallback, path, x + 1, y + h, pos)
        w, h = max(w, 1 + fw), h + fh
    return w, h


_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:]+)\{(?P<labels>[^}]*)\}\s+(?P<value>[-+0-9.eE]+|NaN|\+Inf)')


def stats_from_prometheus(text: str, graph_name: str) -> dict[str, NodeStats]:
    """Per-node traffic share and mean latency from a Prometheus scrape of Ray's endpoint."""
    requests = 0.0
    calls: dict[str, float] = defaultdict(float)
    lat_sum: dict[str, float] = defaultdict(float)
    lat_count: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group("labels")))
        if labels.get("graph") != graph_name:
            continue
        value = float(m.group("value"))
        name = m.group("name")
        if name == "ray_modelweave_requests_total":
            requests += value
        elif name == "ray_modelweave_node_calls_total":
            calls[labels["node"]] += value
        elif name == "ray_modelweave_node_latency_ms_sum":
            lat_sum[labels["node"]] += value
        elif name == "ray_modelweave_node_latency_ms_count":
            lat_count[labels["node"]] += value
    if not requests:
        return {}
    return {node: NodeStats(share=min(1.0, n / requests),
                            mean_ms=lat_sum[node] / lat_count[node] if lat_count[node] else math.nan)
            for node, n in calls.items()}
