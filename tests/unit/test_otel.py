"""OpenTelemetry support: traceparent parsing, span conversion, env config, propagation (no Ray)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from modelweave.adapters.openai import OpenAIGenerator
from modelweave.otel import (
    GraphTracer,
    TraceParent,
    exporter_names,
    load_exporters,
    parse_traceparent,
    start_request,
)
from modelweave.trace import request_trace, row_traces, trace_headers
from modelweave.v1 import messages_pb2 as pb

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


@pytest.mark.parametrize("header", [
    TRACEPARENT,
    f"  {TRACEPARENT} ",
    f"01-{CLIENT_TRACE}-{CLIENT_SPAN}-01-future-field",  # higher versions may add fields
])
def test_valid_traceparents_parse(header: str) -> None:
    parsed = parse_traceparent(header, "vendor=abc")
    assert parsed == TraceParent(CLIENT_TRACE, CLIENT_SPAN, 1, "vendor=abc")
    assert parsed.traceparent == TRACEPARENT


@pytest.mark.parametrize("header", [
    None, "", "garbage",
    f"00-{'0' * 32}-{CLIENT_SPAN}-01",          # zero trace id
    f"00-{CLIENT_TRACE}-{'0' * 16}-01",         # zero parent id
    f"ff-{CLIENT_TRACE}-{CLIENT_SPAN}-01",      # forbidden version
    f"00-{CLIENT_TRACE.upper()}-{CLIENT_SPAN}-01",  # hex must be lowercase
    f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01-extra",    # version 00 has exactly four fields
    f"00-{CLIENT_TRACE[:-1]}-{CLIENT_SPAN}-01",
])
def test_invalid_traceparents_are_ignored(header: str | None) -> None:
    assert parse_traceparent(header, "vendor=abc") is None


def test_oversized_tracestate_is_dropped_not_forwarded() -> None:
    parsed = parse_traceparent(TRACEPARENT, "k=" + "v" * 600)
    assert parsed is not None and parsed.tracestate == ""


@pytest.mark.parametrize(("env", "names"), [
    ({}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp_proto_http"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp_proto_http"]),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp_proto_http"]),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, ["otlp_proto_grpc"]),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
      "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, ["otlp_proto_http"]),
    ({"OTEL_TRACES_EXPORTER": "otlp, Console"}, ["otlp_proto_http", "console"]),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, []),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
])
def test_exporters_follow_the_standard_env_vars(env: dict[str, str], names: list[str]) -> None:
    assert exporter_names(env) == names


def test_bad_exporter_settings_name_the_variable() -> None:
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"):
        exporter_names({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER.*'zipkin-nope'"):
        load_exporters(["zipkin-nope"])
    exporter_names_ok = load_exporters(["otlp_proto_http", "console"])
    assert [type(e).__name__ for e in exporter_names_ok] == ["OTLPSpanExporter", "ConsoleSpanExporter"]


def test_tracing_is_off_without_env_and_costs_no_sdk_objects() -> None:
    assert GraphTracer.from_env("g", {}) is None
    assert start_request(None, None, None, "POST /g", {}) is None
    assert start_request(None, "not-a-traceparent", None, "POST /g", {}) is None


def test_env_builds_one_provider_per_process_and_flush_exports_queued_spans(monkeypatch: Any) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "unit-svc")
    env = {"OTEL_TRACES_EXPORTER": "console"}
    first, second = GraphTracer.from_env("a", env), GraphTracer.from_env("b", env)
    assert first is not None and second is not None and first.provider is second.provider
    assert first.provider.resource.attributes["service.name"] == "unit-svc"  # the SDK's own env handling

    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    tracer = GraphTracer(provider.get_tracer("t"), "g", provider)
    trace = start_request(tracer, None, None, "POST /g", {})
    assert trace is not None
    trace.finish(None, "OK")
    assert exporter.get_finished_spans() == ()  # still queued
    tracer.flush()
    assert len(exporter.get_finished_spans()) == 1
    provider.shutdown()


def test_tracing_off_passes_the_clients_context_on_unchanged() -> None:
    trace = start_request(None, TRACEPARENT, "vendor=abc", "POST /g", {})
    assert trace is not None and trace.span is None
    assert trace.context.headers() == (TRACEPARENT, "vendor=abc")
    assert trace.trace_id == CLIENT_TRACE
    assert trace.response_headers() == []  # no span of ours to tell about
    trace.finish(pb.Trace(), "OK")  # no-op


@pytest.fixture
def exported() -> Iterator[tuple[GraphTracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield GraphTracer(provider.get_tracer("test"), "triage"), exporter
    provider.shutdown()


def _hops() -> pb.Trace:
    return pb.Trace(request_id="r1", total_ms=9.0, spans=[
        pb.Span(node="triage/main/normalise", kind="model", model="ftfy:fix", attempt=1, start_ms=0.5,
                latency_ms=1.25, cpu_ms=0.75),
        pb.Span(node="triage/main/escalate", kind="route", attempt=1, start_ms=2.0, latency_ms=0.1, route="cheap",
                detail="confidence 0.91 >= 0.55"),
        pb.Span(node="triage/main/sentiment-cache", kind="cache", attempt=1, start_ms=2.2, latency_ms=0.3,
                cache_hit=True),
        pb.Span(node="triage/main/answer/grounding", kind="model", model="g", attempt=2, retry=1, start_ms=3.0,
                latency_ms=4.0, verdict="failed", error="UNAVAILABLE"),
    ])


def test_one_span_per_hop_under_a_server_span_that_continues_the_clients_trace(exported: Any) -> None:
    tracer, exporter = exported
    trace = start_request(tracer, TRACEPARENT, "vendor=abc", "POST /triage", {"modelweave.caller": "ops"})
    assert trace is not None and trace.trace_id == CLIENT_TRACE
    request_span_id = trace.span.get_span_context().span_id
    # What model calls carry on and what the client is told: our request span, same trace.
    assert trace.context.headers() == (f"00-{CLIENT_TRACE}-{request_span_id:016x}-01", "vendor=abc")
    assert trace.response_headers() == [("traceparent", trace.context.traceparent)]
    trace.graph_started()
    hops = _hops()
    trace.finish(hops, "OK")

    spans = exporter.get_finished_spans()
    assert len(spans) == 1 + len(hops.spans)
    *children, root = spans
    assert root.name == "POST /triage" and root.kind is SpanKind.SERVER
    assert f"{root.context.trace_id:032x}" == CLIENT_TRACE
    assert root.parent is not None and f"{root.parent.span_id:016x}" == CLIENT_SPAN and root.parent.is_remote
    assert root.attributes["modelweave.graph"] == "triage" and root.attributes["modelweave.caller"] == "ops"
    assert root.attributes["modelweave.request_id"] == "r1" and root.attributes["modelweave.status"] == "OK"
    assert root.status.status_code is not StatusCode.ERROR
    assert root.context.trace_state.get("vendor") == "abc"
    for child, hop in zip(children, hops.spans, strict=True):
        assert child.name == hop.node and child.kind is SpanKind.INTERNAL
        assert child.parent is not None and child.parent.span_id == request_span_id
        assert child.context.trace_id == root.context.trace_id
        assert child.start_time == trace.graph_ns + int(hop.start_ms * 1e6)
        assert child.end_time == child.start_time + int(hop.latency_ms * 1e6)
        assert root.start_time <= child.start_time and child.end_time <= root.end_time + 10**7
    model, route, cache, failed = (c.attributes for c in children)
    assert model == {"modelweave.node": "triage/main/normalise", "modelweave.kind": "model",
                     "modelweave.model": "ftfy:fix", "modelweave.attempt": 1, "modelweave.retry": 0,
                     "modelweave.cache_hit": False, "modelweave.cpu_ms": 0.75}
    assert route["modelweave.route"] == "cheap" and "modelweave.cpu_ms" not in route
    assert route["modelweave.detail"] == "confidence 0.91 >= 0.55"
    assert cache["modelweave.cache_hit"] is True
    assert (failed["modelweave.attempt"], failed["modelweave.retry"], failed["modelweave.verdict"],
            failed["modelweave.error"]) == (2, 1, "failed", "UNAVAILABLE")
    assert children[3].status.status_code is StatusCode.ERROR


def test_failed_request_keeps_the_hops_before_the_failure(exported: Any) -> None:
    tracer, exporter = exported
    trace = start_request(tracer, None, None, "modelweave.v1.GraphService/Infer", {})
    assert trace is not None and len(trace.trace_id) == 32  # a new trace
    hops = pb.Trace(request_id="r2", spans=[pb.Span(node="g/a", kind="model", attempt=1, latency_ms=1.0,
                                                    error="DEADLINE_EXCEEDED")])
    trace.finish(hops, "DEADLINE_EXCEEDED", "request deadline of 10 ms exceeded")
    child, root = exporter.get_finished_spans()
    assert root.parent is None and child.parent.span_id == root.context.span_id
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == "DEADLINE_EXCEEDED: request deadline of 10 ms exceeded"
    # Failed before the graph ran (bad input, shed): the request span alone.
    early = start_request(tracer, None, None, "POST /triage", {})
    assert early is not None
    early.finish(None, "UNAVAILABLE", "shed")
    assert exporter.get_finished_spans()[-1].attributes["modelweave.status"] == "UNAVAILABLE"


def test_unsampled_client_trace_records_nothing_but_is_passed_on(exported: Any) -> None:
    tracer, exporter = exported
    trace = start_request(tracer, f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00", None, "POST /triage", {})
    assert trace is not None
    trace.finish(_hops(), "OK")
    assert exporter.get_finished_spans() == ()
    assert trace.context.trace_id == CLIENT_TRACE and trace.context.flags == 0


def test_trace_headers_per_request_and_per_batch_row() -> None:
    first, second = pb.Message(), pb.Message()
    assert trace_headers(first) == {}
    token = request_trace.set((TRACEPARENT, ""))
    try:
        assert trace_headers() == {"traceparent": TRACEPARENT}
        other = f"00-{'a' * 32}-{'b' * 16}-01"
        with row_traces([first, second], [(other, "k=v"), None]):
            assert trace_headers(first) == {"traceparent": other, "tracestate": "k=v"}
            assert trace_headers(second) == {"traceparent": TRACEPARENT}  # no row context: the request's

            async def in_thread() -> dict[str, str]:
                return await asyncio.to_thread(trace_headers, first)

            assert asyncio.run(in_thread()) == {"traceparent": other, "tracestate": "k=v"}
        assert trace_headers(first) == {"traceparent": TRACEPARENT}
    finally:
        request_trace.reset(token)


class _Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: dict[str, str | None] = {}


class _Handler(BaseHTTPRequestHandler):
    server: _Recorder

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        self.server.seen[prompt] = self.headers.get("traceparent")
        raw = json.dumps({"choices": [{"message": {"content": "ok"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    server = _Recorder()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_openai_adapter_sends_each_rows_traceparent(recorder: _Recorder) -> None:
    gen = OpenAIGenerator(base_url=f"http://127.0.0.1:{recorder.server_address[1]}/v1", model="m",
                          api_key_env=None, concurrency=4)
    gen.load()
    try:
        rows = [pb.Message(text=pb.Text(content=f"q{i}")) for i in range(3)]
        contexts = [(f"00-{CLIENT_TRACE}-{i + 1:016x}-01", "") for i in range(2)] + [None]
        with row_traces(rows, contexts):
            gen.predict(rows)  # a batch: rows run on the adapter's thread pool
        assert recorder.seen == {"q0": contexts[0][0], "q1": contexts[1][0], "q2": None}  # type: ignore[index]
        token = request_trace.set((TRACEPARENT, ""))
        try:
            gen.predict([pb.Message(text=pb.Text(content="single"))])
        finally:
            request_trace.reset(token)
        assert recorder.seen["single"] == TRACEPARENT
    finally:
        gen.close()
