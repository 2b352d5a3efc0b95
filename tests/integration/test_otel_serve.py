"""OpenTelemetry on a real Ray Serve: the ingress exports one span per hop over OTLP/HTTP.

The ingress replica gets standard ``OTEL_*`` variables (deployment ``runtime_env``, as a Serve
config's ``runtime_env: env_vars`` would give a whole application) pointing at a tiny OTLP/HTTP
collector this test runs on a loopback port, so the real SDK exporter path is what is checked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import httpx
import pytest
from conftest import ServeEndpoints, free_port
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.trace.v1 import trace_pb2

from modelweave.client import grpc_stub
from modelweave.v1 import messages_pb2 as pb
from modelweave.v1 import service_pb2 as svc

pytestmark = pytest.mark.integration

GRAPH = {
    "name": "otel",
    "input": ["Text"],
    "timeout_s": 20,
    "flow": {"kind": "chain", "name": "main", "steps": [
        {"kind": "model", "name": "normalise", "impl": "modelweave.examples.rules:Normaliser"},  # in the ingress
        {"kind": "model", "name": "language", "impl": "modelweave.examples.rules:StopwordLanguage"},
        {"kind": "route", "name": "by-language", "default": "english",
         "rules": [{"branch": "other", "when": [{"field": "text.language", "op": "ne", "value": "en"}]}],
         "branches": {"other": None, "english": {
             "kind": "model", "name": "echo", "impl": "otel_models:TraceEcho",
             # Its own replica, batched: the trace context travels with the Serve call, per row.
             "deployment": {"inline": False, "batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0.002}}}}},
    ]},
}
CLIENT_SPAN = "00f067aa0ba902b7"
TEXT = "the parcel is late and it was damaged"


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: keeps every span it is sent, with its resource attributes."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", free_port()), _Receive)
        self.spans: list[tuple[dict[str, Any], trace_pb2.Span]] = []
        self.lock = threading.Lock()

    def trace(self, trace_id: str, count: int, timeout_s: float = 30.0) -> tuple[list[trace_pb2.Span], dict]:
        """Waits for ``count`` spans of trace ``trace_id``; returns them and their resource."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                found = [(r, s) for r, s in self.spans if s.trace_id.hex() == trace_id]
            if len(found) >= count or time.monotonic() > deadline:
                return [s for _, s in found], (found[0][0] if found else {})
            time.sleep(0.1)


class _Receive(BaseHTTPRequestHandler):
    server: Collector

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        request = otlp.ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
        ok = self.path == "/v1/traces" and self.headers.get("Content-Type") == "application/x-protobuf"
        with self.server.lock:
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    self.server.spans += [(resource, span) for span in scope_spans.spans]
        body = otlp.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200 if ok else 400)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _attributes(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in pairs:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


def _app(graph: dict[str, Any], env: dict[str, str]) -> Any:
    """``deployments.app.graph_app`` with ``env`` in the ingress replica's runtime_env."""
    from ray import serve

    from deployments.app import deployment_options, ingress_name
    from deployments.ingress import GraphIngress
    from deployments.model import ModelDeployment
    from modelweave.checker import check_graph
    from modelweave.spec import dump_graph, parse_graph

    spec = parse_graph(graph)
    checked = check_graph(spec)
    deployment: Any = serve.deployment
    handles = {}
    for name, plan in checked.layout.deployments.items():
        assert not plan.group
        handles[name] = deployment(ModelDeployment).options(name=name, **deployment_options(plan.settings)).bind(
            checked.models[name].model_dump(mode="json"))
    options = deployment_options(spec.ingress)
    options["ray_actor_options"]["runtime_env"] = {"env_vars": env}  # merged with the job's PYTHONPATH
    return deployment(GraphIngress).options(name=ingress_name(spec), **options).bind(dump_graph(spec), handles)


@pytest.fixture(scope="module")
def traced(serve_endpoints: ServeEndpoints) -> Iterator[tuple[ServeEndpoints, Collector]]:
    from ray import serve

    collector = Collector()
    thread = threading.Thread(target=collector.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}",
           "OTEL_SERVICE_NAME": "modelweave-test", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    serve.run(_app(GRAPH, env), name="otel", route_prefix="/otel")
    yield serve_endpoints, collector
    serve.delete("otel")
    collector.shutdown()
    collector.server_close()


def _check_spans(collector: Collector, trace: pb.Trace, client_trace: str, answered: str, name: str) -> None:
    """One SERVER span (child of the client's) plus one child per hop, with the hop's attributes."""
    _, trace_id, request_span_id, _ = answered.split("-")
    assert trace_id == client_trace and trace.trace_id == client_trace
    spans, resource = collector.trace(client_trace, 1 + len(trace.spans))
    assert len(spans) == 1 + len(trace.spans), [s.name for s in spans]
    assert resource["service.name"] == "modelweave-test"
    (root,) = [s for s in spans if s.kind == trace_pb2.Span.SPAN_KIND_SERVER]
    assert root.name == name
    assert root.span_id.hex() == request_span_id and root.parent_span_id.hex() == CLIENT_SPAN
    root_attrs = _attributes(root.attributes)
    assert root_attrs["modelweave.graph"] == "otel" and root_attrs["modelweave.status"] == "OK"
    assert root_attrs["modelweave.request_id"] == trace.request_id
    hops = sorted((s for s in spans if s is not root), key=lambda s: s.start_time_unix_nano)
    assert sorted((h.name, _attributes(h.attributes)["modelweave.kind"]) for h in hops) == sorted(
        (s.node, s.kind) for s in trace.spans)
    for hop in hops:
        assert hop.parent_span_id == root.span_id and hop.kind == trace_pb2.Span.SPAN_KIND_INTERNAL
        assert root.start_time_unix_nano <= hop.start_time_unix_nano <= hop.end_time_unix_nano
        assert hop.end_time_unix_nano <= root.end_time_unix_nano
    by_node = {s.node: s for s in trace.spans}
    for hop in hops:
        attrs, source = _attributes(hop.attributes), by_node[hop.name]
        assert attrs["modelweave.node"] == source.node and attrs["modelweave.attempt"] == source.attempt
        assert attrs["modelweave.retry"] == source.retry and attrs["modelweave.cache_hit"] == source.cache_hit
        assert hop.end_time_unix_nano - hop.start_time_unix_nano == int(source.latency_ms * 1e6)
        if source.kind == "model":
            assert attrs["modelweave.cpu_ms"] == pytest.approx(source.cpu_ms)
            assert attrs["modelweave.model"] == source.model
    route = next(h for h in hops if h.name.endswith("/by-language"))
    assert _attributes(route.attributes)["modelweave.route"] == "english"


def test_http_request_continues_the_clients_trace_with_a_span_per_hop(traced):
    endpoints, collector = traced
    client_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = httpx.post(f"{endpoints.http}/otel", json={"input": {"text": {"content": TEXT}}}, timeout=60,
                   headers={"traceparent": f"00-{client_trace}-{CLIENT_SPAN}-01", "tracestate": "vendor=abc"})
    assert r.status_code == 200, r.text
    resp = json_format.Parse(r.text, svc.InferResponse())
    answered = r.headers["traceparent"]
    # Passed on: the model replica saw the request span's context, as an outgoing call would send it.
    assert resp.result.classification.label == answered
    _check_spans(collector, resp.trace, client_trace, answered, "POST /otel")


def test_grpc_request_continues_the_clients_trace_with_a_span_per_hop(traced):
    endpoints, collector = traced
    client_trace = "0af7651916cd43dd8448eb211c80319c"
    request = svc.InferRequest(input=pb.Message(text=pb.Text(content=TEXT)))
    resp, call = grpc_stub(endpoints.grpc).Infer.with_call(
        request, timeout=60, metadata=(("application", "otel"), ("traceparent", f"00-{client_trace}-{CLIENT_SPAN}-01")))
    answered = dict(call.trailing_metadata())["traceparent"]
    assert resp.result.classification.label == answered
    _check_spans(collector, resp.trace, client_trace, answered, "modelweave.v1.GraphService/Infer")


def test_without_a_client_context_each_request_starts_a_trace(traced):
    endpoints, collector = traced
    r = httpx.post(f"{endpoints.http}/otel", json={"input": {"text": {"content": TEXT}}}, timeout=60)
    assert r.status_code == 200, r.text
    trace = json_format.Parse(r.text, svc.InferResponse()).trace
    assert len(trace.trace_id) == 32 and r.headers["traceparent"].split("-")[1] == trace.trace_id
    spans, _ = collector.trace(trace.trace_id, 1 + len(trace.spans))
    assert len(spans) == 1 + len(trace.spans)
    (root,) = [s for s in spans if not s.parent_span_id]
    assert root.kind == trace_pb2.Span.SPAN_KIND_SERVER


def test_a_failed_grpc_request_still_answers_its_trace(traced):
    endpoints, collector = traced
    client_trace = "11111111111111111111111111111111"
    request = svc.InferRequest(input=pb.Message(classification=pb.Classification(label="x")))  # no Text: invalid
    with pytest.raises(grpc.RpcError) as info:
        grpc_stub(endpoints.grpc).Infer(request, timeout=60, metadata=(
            ("application", "otel"), ("traceparent", f"00-{client_trace}-{CLIENT_SPAN}-01")))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert dict(info.value.trailing_metadata())["traceparent"].split("-")[1] == client_trace
    spans, _ = collector.trace(client_trace, 1)
    (root,) = spans
    assert _attributes(root.attributes)["modelweave.status"] == "INVALID_ARGUMENT"
    assert root.status.code == trace_pb2.Status.STATUS_CODE_ERROR


def test_streaming_requests_are_traced_too(traced):
    endpoints, collector = traced
    client_trace = "22222222222222222222222222222222"
    header = f"00-{client_trace}-{CLIENT_SPAN}-01"
    r = httpx.post(f"{endpoints.http}/otel/stream", json={"input": {"text": {"content": TEXT}}}, timeout=60,
                   headers={"traceparent": header})
    assert r.status_code == 200 and r.headers["traceparent"].split("-")[1] == client_trace
    last = json_format.Parse(r.text.strip().splitlines()[-1], svc.InferEvent())
    _check_spans(collector, last.result.trace, client_trace, r.headers["traceparent"], "POST /otel/stream")

    client_trace = "33333333333333333333333333333333"
    stream = grpc_stub(endpoints.grpc).InferStream(
        svc.InferRequest(input=pb.Message(text=pb.Text(content=TEXT))), timeout=60,
        metadata=(("application", "otel"), ("traceparent", f"00-{client_trace}-{CLIENT_SPAN}-01")))
    events = list(stream)
    answered = dict(stream.trailing_metadata())["traceparent"]
    _check_spans(collector, events[-1].result.trace, client_trace, answered,
                 "modelweave.v1.GraphService/InferStream")
