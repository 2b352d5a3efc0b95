"""Pictures of a graph: branches rejoin, fallbacks and loops are styled, Mermaid and image agree."""

from __future__ import annotations

import pathlib
import re
from collections import defaultdict
from typing import Any

import pytest
from fakes import graph, model

from modelweave.checker import CheckedGraph, check_graph
from modelweave.draw import NodeStats, build_drawing, drawing_to_mermaid, layout_drawing, render_image, to_mermaid
from modelweave.draw_graph import DrawingGraph
from modelweave.spec import load_graph, parse_graph

REPO = pathlib.Path(__file__).resolve().parents[2]


def load(name: str) -> CheckedGraph:
    return check_graph(load_graph(REPO / "examples" / name))


@pytest.fixture(scope="module")
def triage() -> CheckedGraph:
    return load("triage.yaml")


def sources_into(drawing: DrawingGraph, target: str) -> dict[str, str]:
    return {e.source: e.style for e in drawing.edges if e.target == target}


def forward_order(drawing: DrawingGraph) -> list[str]:
    """Topological order over all edges but the validate loops (raises on any other cycle)."""
    indegree = dict.fromkeys(drawing.nodes, 0)
    out: dict[str, list[str]] = defaultdict(list)
    for e in drawing.edges:
        if not e.back:
            indegree[e.target] += 1
            out[e.source].append(e.target)
    ready = [n for n, d in indegree.items() if d == 0]
    order = []
    while ready:
        node = ready.pop()
        order.append(node)
        for nxt in out[node]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    assert len(order) == len(drawing.nodes), "a cycle other than a validate loop"
    return order


def assert_well_formed(drawing: DrawingGraph) -> None:
    """Every edge joins two boxes; the flow runs from input to output with no dead end."""
    assert drawing.edges
    for e in drawing.edges:
        assert e.source in drawing.nodes and e.target in drawing.nodes, e
    order = forward_order(drawing)
    assert order[0] == "input" and order[-1] == "output"
    position = {n: i for i, n in enumerate(order)}
    for e in drawing.edges:
        # Only the validate loop points upstream, and it points at a box the validator came from.
        assert (position[e.source] > position[e.target]) == e.back, e
    leaving = {e.source for e in drawing.edges if not e.back}
    assert set(drawing.nodes) - leaving == {"output"}  # everything rejoins the flow


def test_triage_branches_merge_back_into_the_next_step(triage: CheckedGraph) -> None:
    drawing = build_drawing(triage)
    assert_well_formed(drawing)
    base = "triage/main"
    merge = f"{base}/classify-and-redact"
    cache, ensemble = f"{merge}/sentiment-cache", f"{merge}/sentiment-cache/sentiment/escalate/ensemble"
    # Classification and redaction start from the same box; after the cached sentiment decision,
    # the ensemble's join, its fallback, the route's pass-through branch and the cache hit rejoin
    # the two redactors at the merge's join.
    assert sources_into(drawing, cache) == sources_into(drawing, f"{merge}/redaction") == {merge: "flow"}
    assert sources_into(drawing, f"{merge}#join") == {
        f"{ensemble}#join": "flow", f"{ensemble}/tfidf-fallback": "flow",
        f"{cache}/sentiment/escalate": "branch", cache: "hit",
        f"{merge}/redaction/redact": "flow", f"{merge}/redaction/redact-patterns": "flow"}
    assert drawing.nodes[f"{merge}#join"].lines == ["merge"]
    # Parallel branches meet at the join (the aggregate), not at the next step.
    assert sources_into(drawing, f"{ensemble}#join") == {
        f"{ensemble}/minilm": "flow", f"{ensemble}/tfidf-second-opinion": "flow"}
    assert drawing.nodes[f"{ensemble}#join"].lines == ["mean 0.6/0.4"]
    assert sources_into(drawing, f"{base}/answer-path") == {f"{merge}#join": "flow"}
    answer = f"{base}/answer-path/answer/grounded"
    assert set(sources_into(drawing, "output")) == {
        f"{base}/answer-path/handoff-complaint", f"{base}/answer-path/handoff-blocked",
        f"{base}/answer-path/handoff-language", f"{answer}/grounding", f"{answer}/handoff-ungrounded"}
    assert drawing.groups[cache][0] == f"{cache}/sentiment/tfidf"


def test_triage_fallback_loop_and_escalation_edges(triage: CheckedGraph) -> None:
    drawing = build_drawing(triage)
    by_style = defaultdict(list)
    for e in drawing.edges:
        by_style[e.style].append(e)
    ensemble = "triage/main/classify-and-redact/sentiment-cache/sentiment/escalate/ensemble"
    (fallback,) = by_style["fallback"]
    assert (fallback.source, fallback.target, fallback.role) == (
        ensemble, f"{ensemble}/tfidf-fallback", "fallback on error")
    grounded = "triage/main/answer-path/answer/grounded"
    (loop,) = by_style["retry"]
    assert (loop.source, loop.target, loop.role) == (
        f"{grounded}/grounding", f"{grounded}/retrieve", "grounded: retry (max 3)")
    (escalate,) = by_style["escalate"]
    assert (escalate.source, escalate.target) == (f"{grounded}/grounding", f"{grounded}/handoff-ungrounded")
    assert "Verdict" in escalate.types
    # Edge labels carry the parts on the edge, in envelope order.
    edge = next(e for e in drawing.edges if e.target == "triage/main/guard")
    assert edge.label_text() == "Text"
    embed = next(e for e in drawing.edges if e.source == "triage/main/answer-path/answer/embed")
    assert embed.label_text() == "Text, Embedding, Classification, Verdict"


def parse_mermaid(text: str) -> tuple[dict[str, str], list[tuple[str, str, str, str]], dict[int, str]]:
    nodes = dict(re.findall(r"^\s+(n\d+)[\[({]+\"(.*?)\"[\])}]+$", text, re.M))
    edges = re.findall(r"^\s+(n\d+) (-->|-\.->|==>)\|\"(.*?)\"\| (n\d+)$", text, re.M)
    styles = {int(i): s for i, s in re.findall(r"^\s+linkStyle (\d+) (.*)$", text, re.M)}
    return nodes, [(a, arrow, label, b) for a, arrow, label, b in edges], styles


@pytest.mark.parametrize("example", ["triage.yaml", "demo.yaml"])
def test_mermaid_and_image_share_one_structure(example: str) -> None:
    checked = load(example)
    drawing = build_drawing(checked)
    text = to_mermaid(checked)
    assert text == drawing_to_mermaid(drawing)
    nodes, edges, styles = parse_mermaid(text)
    ids = {node_id: f"n{i}" for i, node_id in enumerate(drawing.nodes)}
    assert set(nodes) == set(ids.values())
    assert [(a, b) for a, _, _, b in edges] == [(ids[e.source], ids[e.target]) for e in drawing.edges]
    arrows = {"flow": "-->", "branch": "-->", "fallback": "-.->", "retry": "-.->", "hit": "-.->", "escalate": "==>"}
    for i, ((_, arrow, label, _), edge) in enumerate(zip(edges, drawing.edges, strict=True)):
        assert arrow == arrows[edge.style] and label == edge.label_text()
        assert (i in styles) == (edge.style not in ("flow", "branch"))
    fallback = [i for i, e in enumerate(drawing.edges) if e.style == "fallback"]
    assert fallback and all("#dc2626" in styles[i] and "dasharray" in styles[i] for i in fallback)
    # The image places exactly the same boxes and edges.
    placement = layout_drawing(drawing)
    assert set(placement.boxes) == set(drawing.nodes)
    assert [p.edge for p in placement.edges] == drawing.edges


def test_triage_picture_fits_a_screen_without_overlaps(triage: CheckedGraph, tmp_path: pathlib.Path) -> None:
    import matplotlib.image

    drawing = build_drawing(triage)
    placement = layout_drawing(drawing)
    things = list(placement.boxes.values()) + [p.label for p in placement.edges if p.label is not None]
    for i, a in enumerate(things):
        for b in things[i + 1:]:
            assert not a.overlaps(b), (a, b)
    out = tmp_path / "triage.png"
    render_image(triage, out)
    height, width = matplotlib.image.imread(str(out)).shape[:2]
    assert 1000 <= width <= 1920 and height <= 2400, (width, height)
    # No box sits inside a cache's group that is not part of the cached flow.
    for cache_id, group in placement.groups.items():
        inside = {cache_id, *drawing.groups[cache_id]}
        for node_id, box in placement.boxes.items():
            if node_id not in inside:
                assert not group.overlaps(box), node_id


def test_stats_annotate_boxes_and_edges(triage: CheckedGraph, tmp_path: pathlib.Path) -> None:
    base = "triage/main"
    stats = {f"{base}/normalise": NodeStats(share=1.0, mean_ms=0.4),
             f"{base}/classify-and-redact/sentiment-cache": NodeStats(share=1.0, mean_ms=3.0),
             f"{base}/classify-and-redact/sentiment-cache/sentiment": NodeStats(share=0.25, mean_ms=9.0)}
    drawing = build_drawing(triage, stats)
    assert drawing.nodes[f"{base}/normalise"].lines[-1] == "100% · 0.4 ms"
    hit = next(e for e in drawing.edges if e.style == "hit")
    assert hit.share == pytest.approx(0.75) and hit.label_text().endswith("· 75%")
    miss = next(e for e in drawing.edges if e.role == "miss")
    assert miss.share == pytest.approx(0.25)
    assert "75%" in to_mermaid(triage, stats)
    render_image(triage, tmp_path / "triage.svg", stats)
    assert (tmp_path / "triage.svg").read_text().startswith("<?xml")


def every_kind() -> dict[str, Any]:
    """Router route, chain and validate with fallbacks, refine and escalate-at-once, nested caches."""
    label = model("lbl", "Label")
    guarded_chain = {"kind": "chain", "name": "guarded", "steps": [model("tag", "Tag")],
                     "fallback": model("tag-fb", "Tag")}
    refine = {"kind": "validate", "name": "refine", "on_failure": "refine", "max_attempts": 3,
              "target": model("draft", "RefineReply"), "validator": model("judge", "Judge"),
              "fallback": model("draft-fb", "Reply")}
    at_once = {"kind": "validate", "name": "strict", "on_failure": "escalate", "max_attempts": 1,
               "target": model("reply", "Reply"), "validator": model("judge2", "Judge"),
               "escalate": model("reply-strong", "Reply")}
    inner = {"kind": "cache", "name": "inner", "body": {
        "kind": "parallel", "name": "fan", "aggregate": {"strategy": "first_valid"},
        "branches": [model("p1", "Label"), model("p2", "Label")]}}
    routed = {"kind": "route", "name": "pick", "default": "a", "router": model("router", "Label", label="a"),
              "branches": {"a": refine, "b": at_once, "c": None}}
    flow = {"kind": "chain", "name": "main", "steps": [
        label, guarded_chain, {"kind": "cache", "name": "outer", "body": inner}, routed]}
    return graph(flow, input=["Text"])


def test_every_kind_draws_as_a_connected_forward_flow(tmp_path: pathlib.Path) -> None:
    checked = check_graph(parse_graph(every_kind()))
    drawing = build_drawing(checked)
    assert_well_formed(drawing)
    base = "g/main"
    styles = {(e.source, e.target): (e.style, e.role) for e in drawing.edges}
    # A chain with a fallback gets a box to hang the fallback on.
    assert drawing.nodes[f"{base}/guarded"].kind == "chain"
    assert styles[(f"{base}/guarded", f"{base}/guarded/tag-fb")] == ("fallback", "fallback on error")
    # The router runs between the route box and the branches; the pass-through branch leaves from it.
    pick = f"{base}/pick"
    assert styles[(pick, f"{pick}/router")][0] == "flow"
    assert styles[(f"{pick}/router", f"{pick}/refine")] == ("branch", "a (default)")
    assert (f"{pick}/router", "output") in styles
    # refine loops; escalate-at-once has no loop, only the escalation.
    assert styles[(f"{pick}/refine/judge", f"{pick}/refine/draft")] == ("retry", "refine: refine (max 3)")
    assert not any(e.back for e in drawing.edges if e.source == f"{pick}/strict/judge2")
    assert styles[(f"{pick}/strict/judge2", f"{pick}/strict/reply-strong")][0] == "escalate"
    # Nested caches: the inner group lies inside the outer one.
    outer, inner = f"{base}/outer", f"{base}/outer/inner"
    assert inner in drawing.groups[outer] and set(drawing.groups[inner]) < set(drawing.groups[outer])
    assert drawing.nodes[f"{inner}/fan#join"].lines == ["first_valid"]
    text = to_mermaid(checked)
    assert text.count("subgraph") == 2 and text.count("\n  end") == 1 and text.count("\n    end") == 1
    render_image(checked, tmp_path / "every.png")
    assert (tmp_path / "every.png").stat().st_size > 10_000
