"""The batch job's compact trace columns (pure functions, no Ray)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from modelweave.batch.rows import route_of, trace_columns
from modelweave.v1 import messages_pb2 as pb


def _reference(trace: pb.Trace) -> dict[str, Any]:
    """The columns as first written: one pass over the spans per column."""
    spans = trace.spans
    verdicts = [s.verdict for s in spans if s.kind == "validate" and s.verdict] or [s.verdict for s in spans
                                                                                   if s.verdict]
    return {
        "route": route_of(trace),
        "attempts": max((s.attempt for s in spans), default=1),
        "verdict": verdicts[-1] if verdicts else None,
        "cache_hit": any(s.cache_hit for s in spans),
        "latency_ms": trace.total_ms,
    }


def _random_trace(rng: random.Random) -> pb.Trace:
    trace = pb.Trace(request_id="r", total_ms=rng.random() * 100)
    for i in range(rng.randint(0, 12)):
        trace.spans.add(node=f"g/main/n{i}", kind=rng.choice(["model", "route", "validate", "cache"]),
                        attempt=rng.randint(0, 3), route=rng.choice(["", "", "keep", "escalate"]),
                        verdict=rng.choice(["", "", "passed", "failed"]), cache_hit=rng.random() < 0.2)
    return trace


@pytest.mark.parametrize("seed", range(200))
def test_compact_trace_columns_match_their_definition(seed: int) -> None:
    trace = _random_trace(random.Random(seed))
    assert trace_columns(trace) == _reference(trace)


def test_compact_trace_columns_of_a_triage_like_trace() -> None:
    trace = pb.Trace(total_ms=12.5, spans=[
        pb.Span(node="g/main/cache", kind="cache", attempt=1),
        pb.Span(node="g/main/cache/by-language", kind="route", attempt=1, route="english"),
        pb.Span(node="g/main/reply/check", kind="model", attempt=2, verdict="failed"),
        pb.Span(node="g/main/reply", kind="validate", attempt=2, verdict="passed"),
        pb.Span(node="g/main/other", kind="model", attempt=1, verdict="failed"),
    ])
    assert trace_columns(trace) == {"route": "by-language=english", "attempts": 2, "verdict": "passed",
                                    "cache_hit": False, "latency_ms": 12.5}
    assert trace_columns(pb.Trace()) == {"route": "", "attempts": 1, "verdict": None, "cache_hit": False,
                                         "latency_ms": 0.0}
