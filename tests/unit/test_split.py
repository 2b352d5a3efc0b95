"""The ``split`` node: weighted shares, stickiness, trace and metrics, type rule, ablation, hop paths."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from fakes import build, graph, model, spans_of, text

from modelweave.checker import check_graph
from modelweave.errors import GraphSpecError
from modelweave.evolve import ablations
from modelweave.layout import hop_paths
from modelweave.nodes.split import SplitNode, pick_branch, sticky_draw
from modelweave.observe import DictSink, TraceMetrics
from modelweave.spec import dump_graph, parse_graph

pytestmark = pytest.mark.timeout(30)


def split(branches: dict[str, Any], weights: dict[str, float], name: str = "ab", **extra: Any) -> dict[str, Any]:
    return {"kind": "split", "name": name, "branches": branches, "weights": weights, **extra}


def ab_graph(weights: dict[str, float], **extra: Any) -> dict[str, Any]:
    return graph(split({"current": model("current", "Label", label="negative"),
                        "candidate": model("candidate", "Label", label="positive")}, weights, **extra))


async def _labels(ex: Any, n: int, **metadata_of: Any) -> Counter[str]:
    async def one(i: int) -> str:
        meta = {k: f(i) for k, f in metadata_of.items()}
        result = await ex.run(text(f"message {i}", **meta))
        return str(result.message.classification.label)

    return Counter(await asyncio.gather(*(one(i) for i in range(n))))


async def test_shares_follow_the_weights_over_1000_requests():
    ex, _ = build(ab_graph({"current": 90, "candidate": 10}))
    counts = await _labels(ex, 1000)
    # Binomial(1000, 0.1): sd 9.5, so +-40 is > 4 sd; a fixed seed would hide a biased draw.
    assert 60 <= counts["positive"] <= 140, counts


async def test_zero_weight_branch_never_runs():
    ex, caller = build(ab_graph({"current": 1, "candidate": 0}))
    counts = await _labels(ex, 200)
    assert counts == Counter({"negative": 200})
    assert caller.adapters.get("candidate") is None or caller.adapters["candidate"].calls == 0


async def test_sticky_field_keeps_a_user_on_one_branch_and_keeps_the_shares():
    ex, _ = build(ab_graph({"current": 50, "candidate": 50}, sticky="metadata.user"))
    first = {}
    for repeat in range(3):
        for u in range(200):
            result = await ex.run(text(f"text {repeat}", user=f"u{u}"))
            label = result.message.classification.label
            assert first.setdefault(u, label) == label
    share = sum(1 for v in first.values() if v == "positive") / len(first)
    assert 0.35 <= share <= 0.65


async def test_missing_sticky_field_falls_back_to_random_and_says_so():
    ex, _ = build(ab_graph({"current": 50, "candidate": 50}, sticky="metadata.user"))
    result = await ex.run(text("no user"))
    (span,) = spans_of(result.trace, "split")
    assert "metadata.user missing" in span.detail
    sticky = await ex.run(text("with user", user="u1"))
    assert "sticky by metadata.user" in spans_of(sticky.trace, "split")[0].detail


async def test_branch_is_in_trace_and_route_metrics():
    ex, _ = build(ab_graph({"current": 0, "candidate": 1}))
    result = await ex.run(text())
    (span,) = spans_of(result.trace, "split")
    assert span.route == "candidate" and span.node == "g/ab"
    sink = DictSink()
    TraceMetrics(ex.graph, sink).record(result.trace, status="OK", latency_ms=1.0)
    assert sink.counter("route_decisions_total", graph="g", node="g/ab", branch="candidate") == 1


def test_pick_branch_bounds():
    node = SplitNode.model_validate(ab_graph({"current": 3, "candidate": 1})["flow"])
    assert pick_branch(node, 0.0) == "current"
    assert pick_branch(node, 0.7499) == "current"
    assert pick_branch(node, 0.75) == "candidate"
    assert pick_branch(node, 0.999999) == "candidate"
    only_first = SplitNode.model_validate(ab_graph({"current": 1, "candidate": 0})["flow"])
    assert pick_branch(only_first, 0.999999) == "current"


def test_sticky_draw_is_stable_and_salted():
    assert sticky_draw("", "g/ab", "u1") == sticky_draw("", "g/ab", "u1")
    assert sticky_draw("", "g/ab", "u1") != sticky_draw("exp2", "g/ab", "u1")
    draws = [sticky_draw("", "g/ab", f"u{i}") for i in range(2000)]
    assert 0.45 < sum(draws) / len(draws) < 0.55 and all(0 <= d < 1 for d in draws)


@pytest.mark.parametrize("weights, message", [
    ({"current": 1}, "missing ['candidate']"),
    ({"current": 1, "candidate": 1, "other": 1}, "unknown ['other']"),
    ({"current": -1, "candidate": 1}, "weights.current must be a finite number >= 0"),
    ({"current": 0, "candidate": 0}, "at least one weight must be > 0"),
])
def test_bad_weights_are_refused_with_the_field(weights, message):
    with pytest.raises(GraphSpecError, match=r"flow: .*" + message.replace("[", r"\[").replace("]", r"\]")):
        parse_graph(ab_graph(weights))


def test_sticky_field_is_type_checked():
    with pytest.raises(GraphSpecError, match=r"g/ab: sticky: field 'classification.label' reads"):
        check_graph(parse_graph(ab_graph({"current": 1, "candidate": 1}, sticky="classification.label")))


def test_output_is_what_every_branch_guarantees():
    data = graph(split({"tagged": model("t", "Tag", language="en"), "labelled": model("l", "Label")},
                       {"tagged": 1, "labelled": 1}), output=["Classification"])
    with pytest.raises(GraphSpecError, match="declares output modelweave.v1.Classification"):
        check_graph(parse_graph(data))


def test_yaml_round_trip_ablation_and_hop_paths():
    spec = parse_graph(ab_graph({"current": 90, "candidate": 10}, sticky="metadata.user"))
    assert parse_graph(dump_graph(spec)) == spec
    (variant,) = [v for v in ablations(spec) if v.removed == "g/ab"]
    assert variant.description == "always the heaviest branch 'current'"
    assert variant.spec.flow.name == "current"
    paths = hop_paths(check_graph(spec))
    assert sorted(p.choices for p in paths) == [("ab=candidate",), ("ab=current",)]
