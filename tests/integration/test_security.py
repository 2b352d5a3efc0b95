"""Security at the edge on a real Serve: token auth on HTTP and gRPC, hostile input, safe errors."""

from __future__ import annotations

import pathlib
import time

import grpc
import httpx
import pytest

from modelweave.client import grpc_stub
from modelweave.v1 import messages_pb2 as pb
from modelweave.v1 import service_pb2 as svc

pytestmark = pytest.mark.integration

TOKEN = "ci-token-0123456789abcdefABCDEF"
OLD_TOKEN = "ci-token-rotated-out-000000000000"
META = (("application", "secure"),)


@pytest.fixture(scope="module")
def secure_app(serve_endpoints, tmp_path_factory):
    """A small graph with token auth, and one that feeds client embeddings to a scikit-learn head."""
    import joblib
    import numpy as np
    from ray import serve
    from sklearn.linear_model import LogisticRegression

    from deployments.app import graph_app
    from modelweave.auth import hash_token
    from modelweave.spec import parse_graph

    tokens = [{"name": "ci", "sha256": hash_token(TOKEN)}, {"name": "ci", "sha256": hash_token(OLD_TOKEN)}]
    secure = parse_graph({
        "name": "secure",
        "ingress": {"auth": {"tokens": tokens}},
        "flow": {"kind": "model", "name": "sentiment", "impl": "modelweave.examples.rules:LexiconSentiment"},
    })
    model_file = pathlib.Path(tmp_path_factory.mktemp("shapes")) / "head64.joblib"
    rng = np.random.default_rng(0)
    joblib.dump(LogisticRegression().fit(rng.normal(size=(40, 64)), ["a", "b"] * 20), model_file)
    shapes = parse_graph({
        "name": "shapes", "input": ["Embedding"],
        "flow": {"kind": "model", "name": "head", "impl": "modelweave.adapters.sklearn:SklearnClassifier",
                 "params": {"model_path": str(model_file), "input": "Embedding"}},
    })
    serve.run(graph_app(secure), name="secure", route_prefix="/secure")
    serve.run(graph_app(shapes), name="shapes", route_prefix="/shapes")
    yield serve_endpoints
    serve.delete("secure")
    serve.delete("shapes")


def _post(base: str, token: str | None, path: str = "/secure", **kw: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    kw.setdefault("json", {"input": {"text": {"content": "great, thanks"}}})
    return httpx.post(f"{base}{path}", headers=headers, timeout=60, **kw)  # type: ignore[arg-type]


def test_http_needs_a_valid_token_and_healthz_stays_open(secure_app):
    for token in (None, "wrong-token-0000000000000000"):
        r = _post(secure_app.http, token)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "UNAUTHENTICATED"
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{secure_app.http}/secure/describe", timeout=30).status_code == 401
    assert httpx.get(f"{secure_app.http}/secure/healthz", timeout=30).text == "ok"
    for token in (TOKEN, OLD_TOKEN):  # both rotated tokens work
        r = _post(secure_app.http, token)
        assert r.status_code == 200, r.text
        assert r.json()["trace"]["caller"] == "ci"
        assert TOKEN not in r.text
    assert httpx.get(f"{secure_app.http}/secure/describe", headers={"authorization": f"Bearer {TOKEN}"},
                     timeout=30).status_code == 200


def test_grpc_needs_the_same_token(secure_app):
    stub = grpc_stub(secure_app.grpc)
    request = svc.InferRequest(input=pb.Message(text=pb.Text(content="great, thanks")))
    for meta in (META, (*META, ("authorization", "Bearer nope-nope-nope-nope-nope"))):
        with pytest.raises(grpc.RpcError) as exc:
            stub.Infer(request, metadata=meta, timeout=30)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as streamed:
            list(stub.InferStream(request, metadata=meta, timeout=30))
        assert streamed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as described:
            stub.DescribeGraph(svc.DescribeGraphRequest(), metadata=meta, timeout=30)
        assert described.value.code() == grpc.StatusCode.UNAUTHENTICATED
    good = (*META, ("authorization", f"Bearer {TOKEN}"))
    response = stub.Infer(request, metadata=good, timeout=30)
    assert response.result.classification.label == "positive" and response.trace.caller == "ci"
    events = list(stub.InferStream(request, metadata=good, timeout=30))
    assert events[-1].result.trace.caller == "ci"


def test_auth_is_counted_by_token_name_never_the_token(secure_app, metrics_port):
    _post(secure_app.http, TOKEN)
    _post(secure_app.http, "wrong-token-0000000000000000")
    deadline = time.monotonic() + 60
    lines: list[str] = []
    while time.monotonic() < deadline:  # Ray exports custom metrics every few seconds
        body = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        lines = [x for x in body.splitlines() if x.startswith("ray_modelweave_auth_total{") and 'graph="secure"' in x]
        if any('caller="ci"' in x for x in lines) and any('result="denied"' in x for x in lines):
            break
        time.sleep(2)
    assert any('caller="ci"' in x and 'result="ok"' in x for x in lines), lines
    assert any('caller="unknown"' in x and 'result="denied"' in x for x in lines), lines
    assert not any(TOKEN in x for x in lines)


@pytest.mark.parametrize("body", [
    b"[" * 5000 + b"]" * 5000,
    b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}",
])
def test_deep_nesting_is_400_not_500(demo_app, body):
    r = httpx.post(f"{demo_app.http}/demo", content=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_ARGUMENT"


def test_undeclared_parts_and_oversized_parts_are_refused_on_both_transports(demo_app):
    hostile = [
        ({"classification": {"label": "positive", "confidence": 1.0}}, "input.classification"),
        ({"metadata": {f"k{i}": "v" for i in range(40)}}, "input.metadata has 40 entries"),
    ]
    stub = grpc_stub(demo_app.grpc)
    for extra, needle in hostile:
        r = httpx.post(f"{demo_app.http}/demo", json={"input": {"text": {"content": "hi"}, **extra}}, timeout=30)
        assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text
        from google.protobuf import json_format

        request = json_format.ParseDict({"input": {"text": {"content": "hi"}, **extra}}, svc.InferRequest())
        with pytest.raises(grpc.RpcError) as exc:
            stub.Infer(request, metadata=(("application", "demo"),), timeout=30)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in exc.value.details()
    r = httpx.post(f"{demo_app.http}/demo", json={"input": {"text": {"content": "hi"}}},
                   headers={"x-request-id": "evil\tid"}, timeout=30)
    assert r.status_code == 400 and "x-request-id" in r.json()["error"]["message"]


def test_wrong_sized_embedding_is_400_naming_the_part_and_size(secure_app):
    r = httpx.post(f"{secure_app.http}/shapes", json={"input": {"embedding": {"values": [0.1, 0.2, 0.3]}}},
                   timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "INVALID_ARGUMENT" and "embedding.values has 3 values" in err["message"]
    assert "expects 64" in err["message"]
    ok = httpx.post(f"{secure_app.http}/shapes", json={"input": {"embedding": {"values": [0.1] * 64}}}, timeout=60)
    assert ok.status_code == 200, ok.text
    stub = grpc_stub(secure_app.grpc)
    with pytest.raises(grpc.RpcError) as exc:
        stub.Infer(svc.InferRequest(input=pb.Message(embedding=pb.Embedding(values=[0.1] * 3))),
                   metadata=(("application", "shapes"),), timeout=30)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "expects 64" in exc.value.details()
