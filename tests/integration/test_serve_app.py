"""The example graph on a real Ray Serve: deployments, settings, HTTP and gRPC, errors."""

from __future__ import annotations

import concurrent.futures
import json

import grpc
import httpx
import pytest
from google.protobuf import json_format

from modelweave.client import grpc_stub
from modelweave.v1 import messages_pb2 as pb
from modelweave.v1 import service_pb2 as svc

pytestmark = pytest.mark.integration

META = (("application", "demo"),)


def _infer_http(base: str, text: str, graph: str = "demo", **extra: object) -> httpx.Response:
    body = {"input": {"text": {"content": text}}, **extra}
    return httpx.post(f"{base}/{graph}", json=body, timeout=60)


def _request(text: str, **kw: object) -> svc.InferRequest:
    return svc.InferRequest(input=pb.Message(text=pb.Text(content=text)), **kw)  # type: ignore[arg-type]


def test_one_deployment_per_model_node_with_its_own_settings(demo_app):
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    app = details["applications"]["demo"]
    assert app["status"] == "RUNNING"
    deployments = app["deployments"]
    # The demo's models are non-blocking rules: those without Serve settings of their own run
    # inside the ingress (`deployment.inline: auto`, a Serve hop saved per call); the two that
    # set replicas / batching / autoscaling keep a deployment of their own with those settings.
    # (`inline: false` restores one deployment per model; tests/integration/test_colocation.py.)
    expected = {"cheap", "negation-aware", "Ingress"}
    assert set(deployments) == expected
    cheap = deployments["cheap"]["deployment_config"]
    assert cheap["num_replicas"] == 1
    assert cheap["max_ongoing_requests"] == 64
    assert cheap["ray_actor_options"]["num_cpus"] == pytest.approx(0.1)
    auto = deployments["negation-aware"]["deployment_config"]["autoscaling_config"]
    assert auto["min_replicas"] == 1 and auto["max_replicas"] == 2
    assert auto["target_ongoing_requests"] == 4
    assert auto["upscale_delay_s"] == 5 and auto["downscale_delay_s"] == 60
    for name in expected:
        assert deployments[name]["status"] == "HEALTHY", name


def test_http_infer_runs_the_graph(demo_app):
    r = _infer_http(demo_app.http, "My parcel arrived damaged and late, I want a refund")
    assert r.status_code == 200, r.text
    resp = json_format.Parse(r.text, svc.InferResponse())
    assert resp.result.classification.label == "negative"
    assert "sorry" in resp.result.generation.text.lower()
    assert resp.result.verdict.passed
    attempts = [s.attempt for s in resp.trace.spans if s.node == "demo/main/reply/reply-check"]
    assert attempts == [1, 2]  # first candidate failed validation, retry passed
    assert r.headers["x-request-id"] == resp.trace.request_id


def test_http_routes_non_english_and_caches_repeats(demo_app):
    first = json_format.Parse(_infer_http(demo_app.http, "Le produit est cassé et je suis déçu").text,
                              svc.InferResponse())
    routes = {s.node: s.route for s in first.trace.spans if s.kind == "route"}
    assert routes["demo/main/sentiment-cache/by-language"] == "other"
    second = json_format.Parse(_infer_http(demo_app.http, "Le produit est cassé et je suis déçu").text,
                               svc.InferResponse())
    cache_spans = [s for s in second.trace.spans if s.kind == "cache"]
    assert cache_spans and cache_spans[0].cache_hit
    assert not any(s.node.endswith("/multilingual") for s in second.trace.spans)
    assert second.result.classification.label == first.result.classification.label


def test_http_stream_emits_spans_then_result(demo_app):
    body = {"input": {"text": {"content": "Great service, thanks"}}}
    with httpx.stream("POST", f"{demo_app.http}/demo/stream", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = [json.loads(line) for line in r.iter_lines() if line]
    assert all("span" in e for e in events[:-1]) and len(events) > 3
    assert events[-1]["result"]["result"]["classification"]["label"] == "positive"


def test_http_describe(demo_app):
    r = httpx.get(f"{demo_app.http}/demo/describe", timeout=30)
    desc = json_format.Parse(r.text, svc.GraphDescription())
    kinds = {n.kind for n in desc.nodes}
    assert kinds == {"model", "chain", "parallel", "route", "validate", "cache"}


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"input": {"txt": {}}}', 400, "txt"),
        (b'{"input": {"text": {"content": ""}}}', 400, "input.text.content"),
        (b'{"input": {"embedding": {"values": [1.0]}}}', 400, "input.text"),
        (b'{"input": {"text": {"content": "hi"}}, "timeout_ms": "soon"}', 400, "timeout_ms"),
        (b"", 400, "empty"),
    ],
)
def test_http_bad_input_is_400_naming_the_field(demo_app, body, status, needle):
    r = httpx.post(f"{demo_app.http}/demo", content=body, timeout=30)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["code"] == "INVALID_ARGUMENT"
    assert needle in err["message"]


def test_http_oversized_payload_is_refused(demo_app):
    big = json.dumps({"input": {"text": {"content": "x" * (2 << 20)}}}).encode()
    r = httpx.post(f"{demo_app.http}/demo", content=big, timeout=30)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "RESOURCE_EXHAUSTED"


def test_http_deadline_is_504(demo_app):
    r = _infer_http(demo_app.http, "a message that cannot finish in a millisecond", timeout_ms=1)
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "DEADLINE_EXCEEDED"


def test_grpc_infer_stream_and_describe(demo_app):
    stub = grpc_stub(demo_app.grpc)
    resp = stub.Infer(_request("I love this, thanks", request_id="req-42"), metadata=META, timeout=60)
    assert resp.result.classification.label == "positive"
    assert resp.trace.request_id == "req-42"
    events = list(stub.InferStream(_request("so slow and broken"), metadata=META, timeout=60))
    assert [e.WhichOneof("event") for e in events][-1] == "result"
    span_nodes = [e.span.node for e in events if e.HasField("span")]
    assert "demo/main/normalise" in span_nodes
    assert events[-1].result.result.classification.label == "negative"
    desc = stub.DescribeGraph(svc.DescribeGraphRequest(), metadata=META, timeout=30)
    assert desc.name == "demo" and any(n.deployment == "cheap" for n in desc.nodes)


def test_grpc_errors_map_to_status_codes(demo_app):
    stub = grpc_stub(demo_app.grpc)
    with pytest.raises(grpc.RpcError) as missing:
        stub.Infer(svc.InferRequest(), metadata=META, timeout=30)
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input" in missing.value.details()
    with pytest.raises(grpc.RpcError) as too_long:
        stub.Infer(_request("y" * 30_000), metadata=META, timeout=30)
    assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input.text.content" in too_long.value.details()
    with pytest.raises(grpc.RpcError) as late:
        stub.Infer(_request("hello there", timeout_ms=1), metadata=META, timeout=30)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(grpc.RpcError) as streamed:
        list(stub.InferStream(svc.InferRequest(), metadata=META, timeout=30))
    assert streamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def fragile_app(serve_endpoints):
    """A graph whose slow model accepts 1 request and queues 1: the third concurrent one is refused."""
    from ray import serve

    from deployments.app import graph_app
    from modelweave.spec import parse_graph

    spec = parse_graph({
        "name": "fragile",
        "flow": {"kind": "route", "name": "pick", "default": "slow",
                 "rules": [{"branch": "broken", "when": [{"field": "text.content", "op": "eq", "value": "boom"}]}],
                 "branches": {
                     "slow": {"kind": "model", "name": "slow", "impl": "slow_models:SlowLabel",
                              "params": {"seconds": 1.0},
                              "deployment": {"max_ongoing_requests": 1, "max_queued_requests": 1}},
                     "broken": {"kind": "model", "name": "broken", "impl": "slow_models:Broken"}}},
    })
    serve.run(graph_app(spec), name="fragile", route_prefix="/fragile")
    yield serve_endpoints
    serve.delete("fragile")


def test_overload_is_503_and_unavailable(fragile_app):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: _infer_http(fragile_app.http, "hi", graph="fragile").status_code,
                              range(8)))
    assert 200 in codes
    assert 503 in codes, codes
    assert set(codes) <= {200, 503}


def test_model_exception_comes_back_typed(fragile_app):
    r = _infer_http(fragile_app.http, "boom", graph="fragile")
    assert r.status_code == 500
    err = r.json()["error"]
    # The exception text stays in the ingress log; the client gets the code, node and request id.
    assert err["code"] == "INTERNAL" and "weights are corrupt" not in err["message"]
    assert err["request_id"] in err["message"]
    assert err["node"] == "fragile/pick/broken"
    stub = grpc_stub(fragile_app.grpc)
    with pytest.raises(grpc.RpcError) as exc:
        stub.Infer(_request("boom"), metadata=(("application", "fragile"),), timeout=30)
    assert exc.value.code() == grpc.StatusCode.INTERNAL
