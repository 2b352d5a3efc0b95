"""``cache`` with ``key: semantic``: near-duplicates hit, the guard refuses negations, metrics, type rule."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import build, graph, model, spans_of, text

from modelweave.checker import check_graph
from modelweave.errors import GraphSpecError
from modelweave.observe import DictSink, TraceMetrics
from modelweave.spec import dump_graph, parse_graph

pytestmark = pytest.mark.timeout(30)


def semantic_graph(**cache: Any) -> dict[str, Any]:
    body = model("expensive", "LabelFromText")
    return graph({"kind": "cache", "name": "c", "key": "semantic", "embed": model("embed", "BagEmbed"),
                  "threshold": 0.8, "body": body, **cache})


async def test_near_duplicate_hits_and_serves_the_stored_answer():
    ex, caller = build(semantic_graph())
    first = await ex.run(text("where is my parcel today"))
    second = await ex.run(text("Where is my parcel, today?"))  # same words: cosine 1.0
    assert caller.adapters["expensive"].calls == 1
    assert second.message.classification.label == first.message.classification.label
    (span,) = spans_of(second.trace, "cache")
    assert span.cache_hit and span.detail.startswith("semantic hit: similarity 1.000")
    assert "parcel" not in span.detail  # never another client's text in a trace
    assert second.message.embedding.model == "bag"  # the request keeps its own embedding


async def test_guard_refuses_a_negated_near_duplicate_and_counts_it():
    ex, caller = build(semantic_graph())
    await ex.run(text("please cancel my order now"))
    negated = await ex.run(text("please don't cancel my order now"))
    assert caller.adapters["expensive"].calls == 2
    (span,) = spans_of(negated.trace, "cache")
    assert not span.cache_hit and span.detail.startswith("near-hit rejected by guard (negation")
    sink = DictSink()
    TraceMetrics(ex.graph, sink).record(negated.trace, status="OK", latency_ms=1.0)
    assert sink.counter("cache_lookups_total", graph="g", node="g/c", result="guard_rejected") == 1


async def test_without_guard_the_negation_is_a_false_hit():
    ex, caller = build(semantic_graph(guard=False))
    await ex.run(text("please cancel my order now"))
    negated = await ex.run(text("please don't cancel my order now"))
    assert caller.adapters["expensive"].calls == 1  # the failure mode the guard exists for
    assert spans_of(negated.trace, "cache")[0].cache_hit


async def test_unrelated_text_misses():
    ex, caller = build(semantic_graph())
    await ex.run(text("where is my parcel"))
    await ex.run(text("the invoice amount looks wrong"))
    assert caller.adapters["expensive"].calls == 2


async def test_embedding_produced_earlier_is_used_without_embed():
    data = graph({"kind": "chain", "name": "main", "steps": [
        model("embed", "BagEmbed"),
        {"kind": "cache", "name": "c", "key": "semantic", "body": model("expensive", "LabelFromText")},
    ]})
    ex, caller = build(data)
    await ex.run(text("reset my password please"))
    await ex.run(text("Reset my password, please"))
    assert caller.adapters["expensive"].calls == 1


def test_semantic_needs_an_embedding():
    data = graph({"kind": "cache", "name": "c", "key": "semantic", "body": model("expensive", "LabelFromText")})
    with pytest.raises(GraphSpecError, match="g/c: key: semantic compares the envelope's modelweave.v1.Embedding"):
        check_graph(parse_graph(data))


@pytest.mark.parametrize("extra, message", [
    ({"key": "exact", "threshold": 0.9}, "threshold only apply with key: semantic"),
    ({"key": "semantic", "key_fields": ["text.content"]}, "key_fields is for key: exact"),
    ({"key": "semantic", "threshold": 1.5}, "threshold"),
])
def test_semantic_fields_are_validated(extra, message):
    data = graph({"kind": "cache", "name": "c", "body": model("expensive", "LabelFromText"), **extra})
    with pytest.raises(GraphSpecError, match=message):
        parse_graph(data)


def test_round_trip_and_hop_paths_include_the_embed_model():
    spec = parse_graph(semantic_graph(scope="replica"))
    assert parse_graph(dump_graph(spec)) == spec
    from modelweave.layout import hop_paths

    (path,) = hop_paths(check_graph(spec))
    assert [m for h in path.hops for m in h.models] == ["embed", "expensive"]


async def test_the_cache_span_covers_the_embedding_of_its_key():
    ex, _ = build(semantic_graph())
    for _ in range(2):  # a miss, then a hit
        spans = {s.node: s for s in (await ex.run(text("where is my parcel today"))).trace.spans}
        c, embed = spans["g/c"], spans["g/c/embed"]
        assert c.start_ms <= embed.start_ms
        assert embed.start_ms + embed.latency_ms <= c.start_ms + c.latency_ms + 1e-6
