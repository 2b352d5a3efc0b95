"""Single-node ablations: every variant type-checks and differs by exactly the removed node."""

from __future__ import annotations

import pathlib

from modelweave.checker import check_graph
from modelweave.evolve import ablations
from modelweave.spec import load_graph

DEMO = pathlib.Path(__file__).resolve().parents[2] / "examples" / "demo.yaml"


def test_demo_ablations_are_the_removable_nodes():
    spec = load_graph(DEMO)
    variants = {v.removed: v for v in ablations(spec)}
    assert set(variants) == {
        "demo/main/normalise",
        "demo/main/language",
        "demo/main/sentiment-cache",
        "demo/main/sentiment-cache/by-language",
        "demo/main/sentiment-cache/by-language/english/confidence",
        "demo/main/sentiment-cache/by-language/english/confidence/ensemble",
    }
    # The validate node cannot go: the graph declares a Verdict output that only it produces.
    assert "demo/main/reply" not in variants
    for removed, variant in variants.items():
        checked = check_graph(variant.spec)
        assert removed not in checked.nodes
        assert len(checked.nodes) < len(check_graph(spec).nodes)


def test_removing_the_adaptive_route_drops_its_feedback():
    spec = load_graph(DEMO)
    variant = {v.removed: v for v in ablations(spec)}["demo/main/sentiment-cache/by-language/english/confidence"]
    checked = check_graph(variant.spec)
    assert checked.states == {}
    reply = checked.nodes["demo/main/reply"].node
    assert reply.feedback == []  # type: ignore[union-attr]
    assert not any(p.endswith("/ensemble") for p in checked.nodes)


def test_cache_and_route_replacements_keep_their_inner_flow():
    variants = {v.removed: v for v in ablations(load_graph(DEMO))}
    no_cache = check_graph(variants["demo/main/sentiment-cache"].spec)
    assert "demo/main/by-language" in no_cache.nodes
    english_only = check_graph(variants["demo/main/sentiment-cache/by-language"].spec)
    assert "demo/main/sentiment-cache/english/cheap" in english_only.nodes
    assert not any(p.endswith("/multilingual") for p in english_only.nodes)
