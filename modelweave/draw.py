"""Pictures of a graph: Mermaid text and a PNG/SVG rendered with matplotlib.

Both come from one drawing graph (:mod:`modelweave.draw_graph`): boxes by kind
(model boxes show the adapter, replicas, CPU/GPU, batching and co-location),
edges labelled with the message parts on them, branches that rejoin the flow,
fallbacks and the validate loop in their own styles. The image is laid out in
layers top to bottom (:mod:`modelweave.draw_layout`). With ``stats`` (from
``modelweave eval`` or a live Prometheus scrape) boxes show the share of requests
reaching them and their mean latency, and edges the share taking them.
"""

from __future__ import annotations

import math
import pathlib
import re
from collections import defaultdict
from typing import TYPE_CHECKING

from modelweave.checker import CheckedGraph
from modelweave.draw_graph import DrawEdge, DrawingGraph, DrawNode, NodeStats, build_drawing
from modelweave.draw_layout import GUTTER, LABEL_GAP, Box, Placement, place
from modelweave.nodes import KINDS

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["NodeStats", "build_drawing", "render_image", "stats_from_prometheus", "to_mermaid"]

#: Fill and outline per box kind: each node kind's own (modelweave.nodes), plus the boxes only pictures have.
_COLOURS = {**{k: kind.colour for k, kind in KINDS.items()}, "join": ("#ffe4e6", "#be123c"),
            "input": ("#f8fafc", "#0f172a"), "output": ("#f8fafc", "#0f172a")}
#: Box kinds drawn as hexagons (decisions).
_HEXAGONS = frozenset(k for k, kind in KINDS.items() if kind.hexagon)
#: Colour and dash pattern per edge style (matplotlib, and the same colours in Mermaid).
_EDGE_STYLES: dict[str, tuple[str, str, str]] = {
    "flow": ("#475569", "solid", "flow, parts on the edge"),
    "branch": ("#475569", "solid", "route branch"),
    "fallback": ("#dc2626", "dashed", "fallback on error"),
    "retry": ("#d97706", "dashed", "validate loop"),
    "escalate": ("#be185d", "solid", "escalation"),
    "hit": ("#7e22ce", "dotted", "cache hit"),
    "mirror": ("#0369a1", "dotted", "shadow mirror (off the request path)"),
}
_MERMAID_SHAPES = {**{k: kind.shape for k, kind in KINDS.items()}, "join": ('(("', '"))'),
                   "input": ('(["', '"])'), "output": ('(["', '"])')}
_MERMAID_ARROWS = {"flow": "-->", "branch": "-->", "fallback": "-.->", "retry": "-.->", "escalate": "==>",
                   "hit": "-.->", "mirror": "-.->"}

#: Font sizes in points; images are written at 100 dpi, so 9 pt is 12.5 px (readable at 1920 px wide).
_DPI = 100
_FONT = 9.0
_LABEL_FONT = 8.0
_PAD_X, _PAD_Y, _LINE = 9.0, 5.0, 1.25
_HEADER = 58.0


def to_mermaid(graph: CheckedGraph, stats: dict[str, NodeStats] | None = None) -> str:
    """Mermaid ``flowchart`` text of the graph (the same boxes and edges as :func:`render_image`)."""
    return drawing_to_mermaid(build_drawing(graph, stats))


def drawing_to_mermaid(drawing: DrawingGraph) -> str:
    """Mermaid text of a drawing graph: cache bodies become subgraphs, edge styles become link styles."""
    ids = {node_id: f"n{i}" for i, node_id in enumerate(drawing.nodes)}
    out = ["flowchart TB", f"  %% {drawing.title}"]
    innermost = _innermost_group(drawing)

    def declare(node: DrawNode, indent: str) -> None:
        left, right = _MERMAID_SHAPES[node.kind]
        text = "<br/>".join(s.replace('"', "'") for s in node.lines)
        out.append(f"{indent}{ids[node.id]}{left}{text}{right}")
        out.append(f"{indent}class {ids[node.id]} {node.kind}")

    def emit(group: str | None, indent: str) -> None:
        for node in drawing.nodes.values():
            if innermost.get(node.id) == group:
                declare(node, indent)
        for child in drawing.groups:
            if innermost.get(child) == group:
                out.append(f'{indent}subgraph {ids[child]}_body["{drawing.nodes[child].lines[0]}: cached"]')
                emit(child, indent + "  ")
                out.append(f"{indent}end")

    emit(None, "  ")
    for i, edge in enumerate(drawing.edges):
        label = edge.label_text().replace('"', "'")
        arrow = _MERMAID_ARROWS[edge.style]
        out.append(f'  {ids[edge.source]} {arrow}|"{label}"| {ids[edge.target]}')
        if edge.style not in ("flow", "branch"):
            colour, dash, _ = _EDGE_STYLES[edge.style]
            extra = ",stroke-dasharray:6 4" if dash != "solid" else ",stroke-width:2px"
            out.append(f"  linkStyle {i} stroke:{colour}{extra}")
    for kind, (fill, stroke) in _COLOURS.items():
        out.append(f"  classDef {kind} fill:{fill},stroke:{stroke}")
    return "\n".join(out) + "\n"


def _innermost_group(drawing: DrawingGraph) -> dict[str, str]:
    """Node id -> the smallest cache group holding it (nested caches nest)."""
    found: dict[str, str] = {}
    for cache_id, members in sorted(drawing.groups.items(), key=lambda kv: -len(kv[1])):
        for member in members:
            found[member] = cache_id  # smaller groups come later and win
    return found


def render_image(graph: CheckedGraph, path: str | pathlib.Path, stats: dict[str, NodeStats] | None = None) -> None:
    """Draws the graph top to bottom into ``path`` (.png or .svg)."""
    drawing = build_drawing(graph, stats)
    placement = layout_drawing(drawing)
    _paint(drawing, placement, path)


def layout_drawing(drawing: DrawingGraph) -> Placement:
    """Places a drawing graph with the image's fonts (pixel geometry, see :func:`render_image`)."""
    measure = _Measure()

    def box_size(node_id: str) -> tuple[float, float]:
        node = drawing.nodes[node_id]
        w, h = measure.block(node.lines, _FONT)
        extra = 18.0 if node.kind in _HEXAGONS else 0.0  # the hexagon's points
        return w + 2 * _PAD_X + extra, h + 2 * _PAD_Y

    def label_size(edge: DrawEdge) -> tuple[float, float]:
        role, text = edge.label()
        width = measure.line(role + " ", _LABEL_FONT, True) if role else 0.0
        return width + measure.line(text, _LABEL_FONT, False), _LABEL_FONT * _DPI / 72 * _LINE

    return place(drawing, box_size, label_size)


class _Measure:
    """Text extents in pixels at the image's dpi; the first line of a block is bold."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_agg import RendererAgg

        self.renderer = RendererAgg(10, 10, _DPI)

    def line(self, text: str, size: float, bold: bool) -> float:
        from matplotlib.font_manager import FontProperties

        prop = FontProperties(size=size, weight="bold" if bold else "normal")
        w, _, _ = self.renderer.get_text_width_height_descent(text, prop, ismath=False)
        return float(w)

    def block(self, lines: list[str], size: float) -> tuple[float, float]:
        if not lines:
            return 0.0, 0.0
        width = max(self.line(s, size, i == 0) for i, s in enumerate(lines))
        return width, len(lines) * size * _DPI / 72 * _LINE


def _paint(drawing: DrawingGraph, placement: Placement, path: str | pathlib.Path) -> None:
    measure = _Measure()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Polygon
    from matplotlib.path import Path

    width = max(placement.width, 900.0)
    height = placement.height + _HEADER
    fig = plt.figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    _header(ax, drawing.title, measure)

    def shift(box: Box) -> Box:
        return Box(box.x, box.y + _HEADER, box.w, box.h)

    for group in sorted(placement.groups.values(), key=lambda g: -g.w * g.h):  # nested caches: inner on top
        g = shift(group)
        ax.add_patch(FancyBboxPatch((g.left, g.top), g.w, g.h, boxstyle="round,pad=0,rounding_size=10",
                                    fc="#faf5ff", ec="#c084fc", lw=1.0, ls="--", zorder=0))
    codes = {"M": Path.MOVETO, "L": Path.LINETO, "C": Path.CURVE4}
    for route in placement.edges:
        colour, dash, _ = _EDGE_STYLES[route.edge.style]
        p = Path([(x, y + _HEADER) for _, (x, y) in route.commands], [codes[c] for c, _ in route.commands])
        ax.add_patch(FancyArrowPatch(path=p, arrowstyle="-|>", mutation_scale=11, color=colour, lw=1.2,
                                     linestyle=dash, zorder=2, shrinkA=0, shrinkB=1))
        if route.label is not None:
            lb = shift(route.label)
            # The loop's label sits left of its line, every other label right of it.
            x = lb.left if route.edge.back else lb.left + GUTTER + LABEL_GAP
            role, text = route.edge.label()
            colour = colour if route.edge.style not in ("flow", "branch") else "#334155"
            if role:
                ax.text(x, lb.y, role, ha="left", va="center", fontsize=_LABEL_FONT, zorder=3, color=colour,
                        weight="bold")
                x += measure.line(role + " ", _LABEL_FONT, True)
            ax.text(x, lb.y, text, ha="left", va="center", fontsize=_LABEL_FONT, zorder=3, color=colour)
    for node_id, placed in placement.boxes.items():
        node = drawing.nodes[node_id]
        b = shift(placed)
        fill, stroke = _COLOURS[node.kind]
        if node.kind in _HEXAGONS:
            tip = 9.0
            ax.add_patch(Polygon([(b.left, b.y), (b.left + tip, b.top), (b.left + b.w - tip, b.top),
                                  (b.left + b.w, b.y), (b.left + b.w - tip, b.top + b.h),
                                  (b.left + tip, b.top + b.h)], closed=True, fc=fill, ec=stroke, lw=1.1, zorder=4))
        else:
            rounding = b.h / 2 if node.kind in ("input", "output", "join") else 6.0
            ax.add_patch(FancyBboxPatch((b.left, b.top), b.w, b.h, boxstyle=f"round,pad=0,rounding_size={rounding}",
                                        fc=fill, ec=stroke, lw=1.6 if node.kind == "parallel" else 1.1, zorder=4))
        step = _FONT * _DPI / 72 * _LINE
        first = b.y - (len(node.lines) - 1) * step / 2
        for i, text in enumerate(node.lines):
            stat = node.stats is not None and i == len(node.lines) - 1
            ax.text(b.x, first + i * step, text, ha="center", va="center", fontsize=_FONT, zorder=5,
                    weight="bold" if i == 0 else "normal", color="#b91c1c" if stat else "#0f172a")
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def _header(ax: Axes, title: str, measure: _Measure) -> None:
    """Title and the legend of edge styles along the top."""
    ax.text(16, 18, title, ha="left", va="center", fontsize=11, weight="bold", color="#0f172a")
    x = 16.0
    for style, (colour, dash, meaning) in _EDGE_STYLES.items():
        if style == "branch":
            continue
        ax.plot([x, x + 28], [42, 42], color=colour, linestyle=dash, lw=1.4)
        ax.text(x + 34, 42, meaning, ha="left", va="center", fontsize=_LABEL_FONT, color="#334155")
        x += 34 + measure.line(meaning, _LABEL_FONT, False) + 22


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
