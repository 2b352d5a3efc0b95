"""Layered (Sugiyama) placement of a drawing graph, computed by grandalf.

Every edge label becomes a vertex of its own in the layered graph (as Graphviz
``dot`` does), so the layout keeps labels apart from boxes and from each other.
The validate loop is laid out as a forward edge and drawn reversed. Geometry is in
pixels with y growing downwards; the renderer only paints what this returns.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from grandalf.graphs import Edge, Graph, Vertex
from grandalf.layouts import SugiyamaLayout

from modelweave.draw_graph import DrawEdge, DrawingGraph

#: Pixels between boxes of one layer and between layers.
X_SPACE = 22.0
Y_SPACE = 12.0
#: The most room between two layers, for wide forks.
MAX_GAP = 44.0
#: Margin around the drawing.
MARGIN = 24.0
#: A label's line runs this far inside its left edge; the text starts after the gap.
GUTTER = 4.0
LABEL_GAP = 6.0

Point = tuple[float, float]
Size = tuple[float, float]


@dataclass
class Box:
    """A placed box: centre and size."""

    x: float
    y: float
    w: float
    h: float

    @property
    def left(self) -> float:
        """Left edge."""
        return self.x - self.w / 2

    @property
    def top(self) -> float:
        """Top edge."""
        return self.y - self.h / 2

    def overlaps(self, other: Box, pad: float = 0.0) -> bool:
        """True when the two rectangles (grown by ``pad``) intersect."""
        return (abs(self.x - other.x) * 2 < self.w + other.w + 2 * pad
                and abs(self.y - other.y) * 2 < self.h + other.h + 2 * pad)


@dataclass
class EdgePath:
    """How to draw one edge: a path of lines and cubic curves, and where its label goes."""

    edge: DrawEdge
    #: Path commands: ("M"|"L", point) or ("C", point) three times in a row per cubic curve.
    commands: list[tuple[str, Point]]
    #: Label box (None for an unlabelled edge); the text starts at its left + GUTTER + LABEL_GAP.
    label: Box | None = None


@dataclass
class Placement:
    """Where everything goes, in pixels."""

    width: float
    height: float
    boxes: dict[str, Box] = field(default_factory=dict)
    edges: list[EdgePath] = field(default_factory=list)
    groups: dict[str, Box] = field(default_factory=dict)


class _View:
    """The view grandalf expects on a vertex: size in, centre out."""

    def __init__(self, w: float, h: float) -> None:
        self.w, self.h = w, h
        self.xy: Point = (0.0, 0.0)
        #: Edge labels only: the edge runs down the label's left side (text on the right), or,
        #: for the validate loop, down its right side (text on the left). None for boxes.
        self.line_left: bool | None = None

    def line_x(self) -> float:
        """Where the edge passes a label vertex."""
        if self.line_left is False:
            return self.xy[0] + self.w / 2 - GUTTER
        return self.xy[0] - self.w / 2 + GUTTER


class _EdgeView:
    def __init__(self) -> None:
        self.points: list[Point] = []

    def setpath(self, points: list[Point]) -> None:
        self.points = [(float(x), float(y)) for x, y in points]


@dataclass
class _Waypoint:
    x: float
    top: float
    bottom: float


def place(drawing: DrawingGraph, box_size: Callable[[str], Size], label_size: Callable[[DrawEdge], Size],
          order_rounds: int = 4) -> Placement:
    """Lays ``drawing`` out top to bottom.

    Args:
        drawing: the boxes and edges.
        box_size: pixel size of a box, by node id.
        label_size: pixel size of an edge's label text (0, 0 for none).
        order_rounds: crossing-reduction sweeps.
    """
    vertices: dict[str, Vertex] = {}
    for node_id in drawing.nodes:
        v = Vertex(node_id)
        v.view = _View(*box_size(node_id))
        vertices[node_id] = v
    chains: list[tuple[DrawEdge, list[Edge], Vertex | None]] = []
    layout_edges: list[Edge] = []
    for i, edge in enumerate(drawing.edges):
        # The loop runs upstream: lay it out downstream (target -> validator), draw it reversed.
        head, tail = (edge.target, edge.source) if edge.back else (edge.source, edge.target)
        lw, lh = label_size(edge)
        hops = [vertices[head]]
        label_vertex = None
        if lw > 0:
            label_vertex = Vertex(("label", i))
            label_vertex.view = _View(lw + GUTTER + LABEL_GAP, lh)
            label_vertex.view.line_left = not edge.back
            hops.append(label_vertex)
        hops.append(vertices[tail])
        pieces = []
        for a, b in zip(hops, hops[1:], strict=False):
            e = Edge(a, b)
            e.view = _EdgeView()
            pieces.append(e)
        layout_edges += pieces
        chains.append((edge, pieces, label_vertex))
    all_vertices = list(vertices.values()) + [c[2] for c in chains if c[2] is not None]
    graph = Graph(all_vertices, layout_edges)
    if len(graph.C) != 1:
        raise ValueError("a drawing graph must be connected")
    sug = SugiyamaLayout(graph.C[0])
    sug.xspace, sug.yspace = X_SPACE, Y_SPACE
    # Dummy vertices (bends of long edges) default to the median box size: keep them thin, or
    # every long edge widens its layers and a label layer it crosses becomes as tall as a box.
    sug.dw, sug.dh = 2.0, 2.0
    sug.init_all(roots=[vertices["input"]], inverted_edges=[])
    sug.draw(order_rounds + 0.5)
    _separate(sug)
    sug.draw_edges()  # again: the paths through the (possibly moved) dummies
    bands = _restack(sug, layout_edges)
    width = max(v.view.xy[0] + v.view.w / 2 for layer in sug.layers for v in layer) + MARGIN
    height = max(bottom for _, bottom in bands.values()) + MARGIN
    placement = Placement(width, height)
    for node_id, v in vertices.items():
        (x, y), view = v.view.xy, v.view
        placement.boxes[node_id] = Box(x, y, view.w, view.h)
    routes = _routes(chains, placement, bands)
    for edge, _, label_vertex in chains:
        label = None
        if label_vertex is not None:
            (x, y), view = label_vertex.view.xy, label_vertex.view
            label = Box(x, y, view.w, view.h)
        placement.edges.append(EdgePath(edge, _commands(routes[id(edge)], edge.back), label))
    for cache_id, members in drawing.groups.items():
        # The cache box heads its body's group; the labels of edges leaving the body belong to it too.
        inside = {cache_id, *members}
        labels = [p.label for p in placement.edges
                  if p.label is not None and p.edge.source in inside and p.edge.style != "hit"]
        placement.groups[cache_id] = _group_box([placement.boxes[m] for m in inside] + labels)
    return placement


def _separate(sug: SugiyamaLayout) -> None:
    """Enforces the spacing in every layer (a guard on the heuristics) and moves the drawing to the margin."""
    for layer in sug.layers:
        ordered = sorted(layer, key=lambda v: v.view.xy[0])
        for prev, v in zip(ordered, ordered[1:], strict=False):
            least = prev.view.xy[0] + (prev.view.w + v.view.w) / 2 + X_SPACE
            if v.view.xy[0] < least:
                v.view.xy = (least, v.view.xy[1])
        _straighten(ordered)
    dx = MARGIN - min(v.view.xy[0] - v.view.w / 2 for layer in sug.layers for v in layer)
    for layer in sug.layers:
        for v in layer:
            v.view.xy = (v.view.xy[0] + dx, v.view.xy[1])


def _straighten(layer: list[Vertex]) -> None:
    """Slides edge labels sideways so their edge runs straight down from the box above.

    Only labels move, and only within the room their neighbours in the layer leave, so
    nothing comes to overlap. The validate loop's label goes left of its forward twin.
    """
    def side(v: Vertex) -> bool | None:  # dummies (grandalf's own views) are not labels
        return getattr(v.view, "line_left", None)

    for i in range(len(layer) - 1):
        a, b = layer[i], layer[i + 1]
        if side(a) and side(b) is False and a.N(-1) == b.N(-1):
            layer[i], layer[i + 1] = b, a
            left = a.view.xy[0] - a.view.w / 2
            b.view.xy = (left + b.view.w / 2, b.view.xy[1])
            a.view.xy = (left + b.view.w + X_SPACE + a.view.w / 2, a.view.xy[1])
    saved = [v.view.xy for v in layer]
    # Forward labels first, stepping over the loop's labels (which then fit in what is left).
    if not _slide(layer, [i for i, v in enumerate(layer) if side(v)], skip_loops=True) or not _slide(
            layer, [i for i, v in enumerate(layer) if side(v) is False], skip_loops=False):
        for v, xy in zip(layer, saved, strict=True):
            v.view.xy = xy
        _slide(layer, [i for i, v in enumerate(layer) if side(v) is not None], skip_loops=False)


def _slide(layer: list[Vertex], which: list[int], skip_loops: bool) -> bool:
    """Moves the labels ``which`` towards straight lines; False when one had no room at all."""
    fits = True
    for i in which:
        v = layer[i]
        above = v.N(-1)
        if len(above) != 1:
            continue
        x = above[0].view.xy[0]
        want = x + v.view.w / 2 - GUTTER if v.view.line_left else x - v.view.w / 2 + GUTTER
        left = [u for u in layer[:i] if not (skip_loops and getattr(u.view, "line_left", None) is False)]
        right = [u for u in layer[i + 1:] if not (skip_loops and getattr(u.view, "line_left", None) is False)]
        low = left[-1].view.xy[0] + (left[-1].view.w + v.view.w) / 2 + X_SPACE if left else -1e9
        high = right[0].view.xy[0] - (right[0].view.w + v.view.w) / 2 - X_SPACE if right else 1e9
        if low <= high:
            v.view.xy = (min(max(want, low), high), v.view.xy[1])
        else:
            fits = False
    return fits


def _restack(sug: SugiyamaLayout, edges: list[Edge]) -> dict[float, tuple[float, float]]:
    """Sets each gap between layers by how far its edges travel sideways; returns the band of each layer.

    A gap crossed only by straight-down edges needs little room; a wide fork needs more
    for its curves to stay apart.
    """
    index = {layer[0].view.xy[1]: i for i, layer in enumerate(sug.layers)}
    travel = [0.0] * len(sug.layers)
    for e in edges:
        for (x0, y0), (x1, _) in zip(e.view.points, e.view.points[1:], strict=False):
            i = index[y0]
            travel[i] = max(travel[i], abs(x1 - x0))
    remap: dict[float, float] = {}
    bands: dict[float, tuple[float, float]] = {}
    top = MARGIN
    for i, layer in enumerate(sug.layers):
        half = max(v.view.h for v in layer) / 2
        y = top + half
        remap[layer[0].view.xy[1]] = y
        bands[y] = (top, y + half)
        for v in layer:
            v.view.xy = (v.view.xy[0], y)
        top = y + half + min(MAX_GAP, Y_SPACE + travel[i] * 0.06)
    for e in edges:
        e.view.points = [(x, remap[y]) for x, y in e.view.points]
    return bands


def _routes(chains: list[tuple[DrawEdge, list[Edge], Vertex | None]], placement: Placement,
            bands: dict[float, tuple[float, float]]) -> dict[int, list[_Waypoint]]:
    """Waypoints of every edge in layout order (downwards), with spread-out ports on the boxes."""
    raw: dict[int, list[Point]] = {}
    ends: dict[int, tuple[str, str]] = {}
    for edge, pieces, _ in chains:
        points: list[Point] = []
        for e in pieces:
            points += e.view.points[1:] if points else e.view.points
        raw[id(edge)] = points
        ends[id(edge)] = (edge.target, edge.source) if edge.back else (edge.source, edge.target)
    # Ports: edges leaving a box's bottom (or entering its top) are spread along it, ordered by
    # where they go, so that merges and forks do not draw on top of each other.
    bottom: dict[str, list[tuple[float, int]]] = defaultdict(list)
    top: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for key, points in raw.items():
        head, tail = ends[key]
        bottom[head].append((points[1][0], key))
        top[tail].append((points[-2][0], key))
    ports: dict[tuple[int, str], float] = {}
    for side, table in (("bottom", bottom), ("top", top)):
        for node_id, uses in table.items():
            box = placement.boxes[node_id]
            uses.sort()
            step = min(16.0, 0.8 * box.w / len(uses))
            for i, (_, key) in enumerate(uses):
                ports[(key, side)] = box.x + (i - (len(uses) - 1) / 2) * step
    routes: dict[int, list[_Waypoint]] = {}
    for key, points in raw.items():
        head, tail = ends[key]
        first, last = placement.boxes[head], placement.boxes[tail]
        ways = [_Waypoint(ports[(key, "bottom")], first.y + first.h / 2, first.y + first.h / 2)]
        for x, y in points[1:-1]:
            band_top, band_bottom = bands[y]
            ways.append(_Waypoint(x, band_top, band_bottom))
        ways.append(_Waypoint(ports[(key, "top")], last.y - last.h / 2, last.y - last.h / 2))
        routes[key] = ways
    for edge, _, label_vertex in chains:
        if label_vertex is not None:  # the line runs down one side of the label
            label_way = routes[id(edge)][1]
            label_way.x = label_vertex.view.line_x()
    return routes


def _commands(ways: list[_Waypoint], reverse: bool) -> list[tuple[str, Point]]:
    """Vertical runs through each layer, cubic curves across the gaps between layers."""
    pts: list[tuple[str, Point]] = [("M", (ways[0].x, ways[0].bottom))]
    for a, b in zip(ways, ways[1:], strict=False):
        # Short vertical handles: nearly straight diagonals, so a fan of edges stays apart.
        handle = (b.top - a.bottom) * 0.3
        pts += [("C", (a.x, a.bottom + handle)), ("C", (b.x, b.top - handle)), ("C", (b.x, b.top))]
        if b is not ways[-1] and b.bottom > b.top:
            pts.append(("L", (b.x, b.bottom)))
    if not reverse:
        return pts
    # Reversed: the same curve from the other end (cubic control points swap order).
    points = [p for _, p in pts]
    codes = [c for c, _ in pts]
    out: list[tuple[str, Point]] = [("M", points[-1])]
    i = len(points) - 1
    while i > 0:
        if codes[i] == "C":
            out += [("C", points[i - 1]), ("C", points[i - 2]), ("C", points[i - 3])]
            i -= 3
        else:
            out.append(("L", points[i - 1]))
            i -= 1
    return out


def _group_box(boxes: list[Box]) -> Box:
    pad = 10.0
    left = min(b.x - b.w / 2 for b in boxes) - pad
    right = max(b.x + b.w / 2 for b in boxes) + pad
    top = min(b.y - b.h / 2 for b in boxes) - pad
    bottom = max(b.y + b.h / 2 for b in boxes) + pad
    return Box((left + right) / 2, (top + bottom) / 2, right - left, bottom - top)
