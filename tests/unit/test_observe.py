"""Metrics derived from traces (no Ray): every series counts what the spans say."""

from __future__ import annotations

import asyncio
import pathlib

from modelweave.checker import check_graph
from modelweave.executor import Executor
from modelweave.local import LocalCaller
from modelweave.observe import DictSink, TraceMetrics
from modelweave.spec import load_graph
from modelweave.v1 import messages_pb2 as pb

DEMO = pathlib.Path(__file__).resolve().parents[2] / "examples" / "demo.yaml"


def _run(texts: list[str]) -> tuple[DictSink, Executor]:
    graph = check_graph(load_graph(DEMO))
    executor = Executor(graph, LocalCaller(graph))
    sink = DictSink()
    metrics = TraceMetrics(graph, sink)

    async def go() -> None:
        for text in texts:
            result = await executor.run(pb.Message(text=pb.Text(content=text)))
            metrics.record(result.trace, status="OK", latency_ms=result.trace.total_ms)
        metrics.record_feedback(executor.feedback_values())

    asyncio.run(go())
    return sink, executor


def test_route_cache_verdict_and_cost_series():
    sink, executor = _run(["terrible broken", "terrible broken", "Le produit est cassé"])
    assert sink.counter("requests_total", graph="demo", status="OK") == 3
    by_lang = "demo/main/sentiment-cache/by-language"
    assert sink.counter("route_decisions_total", graph="demo", node=by_lang, branch="english") == 1
    assert sink.counter("route_decisions_total", graph="demo", node=by_lang, branch="other") == 1
    cache = "demo/main/sentiment-cache"
    assert sink.counter("cache_lookups_total", graph="demo", node=cache, result="hit") == 1
    assert sink.counter("cache_lookups_total", graph="demo", node=cache, result="miss") == 2
    assert sink.counter("validation_verdicts_total", graph="demo", node="demo/main/reply", verdict="passed") == 3
    # Complaints need two reply attempts: responder ran twice for each of the 3 requests.
    assert sink.counter("modelled_cost_total", graph="demo", node="demo/main/reply/responder") == 6
    assert sink.histograms[("validation_attempts", (("graph", "demo"), ("node", "demo/main/reply")))] == [2, 2, 2]
    gauge = sink.gauges[("feedback_value", (("graph", "demo"), ("state", "escalation_threshold")))]
    assert gauge == executor.feedback_values()["escalation_threshold"]


def test_errors_counted_by_status_without_trace():
    graph = check_graph(load_graph(DEMO))
    sink = DictSink()
    TraceMetrics(graph, sink).record(None, status="INVALID_ARGUMENT", latency_ms=1.0)
    assert sink.counter("requests_total", graph="demo", status="INVALID_ARGUMENT") == 1
    assert not any(name == "node_calls_total" for name, _ in sink.counters)
