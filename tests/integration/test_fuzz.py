"""Seeded fuzzing of the demo graph over HTTP and gRPC: hostile input never becomes a 5xx.

10,000+ generated requests (a generator of our own, seeded, so a failure replays): malformed
and deeply nested JSON, wrong types, invalid UTF-8, random bytes, oversized and undeclared
parts, hostile request ids and metadata, plus valid requests mixed in. Pass: no answer is a
5xx other than 503/504 (gRPC: no INTERNAL/UNKNOWN/DATA_LOSS...), no replica restarted, and the
graph answers normally afterwards.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import random
import time

import grpc
import httpx
import pytest

from modelweave.v1 import messages_pb2 as pb
from modelweave.v1 import service_pb2 as svc
from modelweave.v1 import service_pb2_grpc as rpc

pytestmark = pytest.mark.integration

SEED = 20261202
#: Total requests (10,000 by default; the environment variable scales a local investigation).
TOTAL = int(os.environ.get("MODELWEAVE_FUZZ_REQUESTS", "10000"))
HTTP_REQUESTS = TOTAL * 6 // 10
GRPC_REQUESTS = TOTAL - HTTP_REQUESTS
WORKERS = 16
_OK_GRPC = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED}
_WORDS = ["great", "thanks", "broken", "refund", "le", "produit", "est", "cassé", "not", "bad", "{", "}", "%s",
          "\u202e", "\x00", "😀", "<script>", "' OR 1=1", "{metadata}", "\ud7ff", "\\", '"']


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(0, 12)))


def _value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randint(0, 6 if depth < 3 else 4)
    if kind == 5:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == 6:
        return {_text(rng)[:8]: _value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return [None, True, rng.randint(-2**63, 2**64), rng.random() * 1e308, _text(rng)][kind]


def _http_body(rng: random.Random) -> bytes:
    """One hostile (or occasionally valid) HTTP body."""
    # Valid requests run the whole graph (tens of ms of CPU); a few keep both paths honest.
    case = 0 if rng.random() < 0.03 else rng.randint(1, 13)
    text = _text(rng)
    if case == 0:
        return json.dumps({"input": {"text": {"content": text}}}).encode()  # valid
    if case == 1:
        depth = rng.choice([33, 500, 5000])
        inner = b"[" * depth + b"]" * depth
        return rng.choice([inner, b'{"input": ' + inner + b"}"])
    if case == 2:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))  # random bytes
    if case == 3:
        return b'{"input": {"text": {"content": "' + bytes([rng.randint(0x80, 0xFF)]) * 5 + b'"}}}'  # bad UTF-8
    if case == 4:
        return json.dumps({"input": _value(rng)}).encode()  # wrong types
    if case == 5:
        return json.dumps({"input": {"text": {"content": text}}, _text(rng)[:6] or "k": _value(rng)}).encode()
    if case == 6:
        part = rng.choice(["classification", "generation", "verdict", "embedding", "tensors", "error"])
        value = {"tensors": {"x": {"dtype": "DTYPE_UINT8", "shape": [1], "data": "YQ=="}},
                 "embedding": {"values": [0.5] * rng.randint(0, 9000)}}.get(part, {"label": "positive"})
        return json.dumps({"input": {"text": {"content": text}, part: value}}).encode()
    if case == 7:
        meta = {("k" * rng.choice([1, 65])) + str(i): "v" * rng.choice([1, 1025]) for i in range(rng.randint(33, 40))}
        return json.dumps({"input": {"text": {"content": text}, "metadata": meta}}).encode()
    if case == 8:
        rid = rng.choice(["x" * 200, "bad id", "new\nline", "ü"])
        return json.dumps({"input": {"text": {"content": text}}, "request_id": rid}).encode()
    if case == 9:
        timeout = rng.choice([-1, 1, 10**12, "x"])
        return json.dumps({"input": {"text": {"content": text}}, "timeout_ms": timeout}).encode()
    if case == 10:
        raw = json.dumps({"input": {"text": {"content": text}}}).encode()
        return raw[: rng.randint(0, len(raw))]  # truncated
    if case == 11:
        return json.dumps({"input": {"text": {"content": "x" * rng.choice([20_001, 400_000])}}}).encode()
    if case == 12:
        return rng.choice([b"null", b"[]", b"1e999999", b'"s"', b"{}", b'{"input": null}', b"NaN"])
    return json.dumps({"input": {"text": {"content": text, "language": _text(rng)}}, "x": 1}).encode()


def _grpc_request(rng: random.Random) -> tuple[svc.InferRequest, tuple[tuple[str, str], ...]]:
    """One hostile (or occasionally valid) gRPC request and its metadata."""
    meta: list[tuple[str, str]] = [("application", "demo")]
    request = svc.InferRequest(input=pb.Message(text=pb.Text(content=_text(rng))))
    msg = request.input  # the request's own envelope: a constructor argument would be copied
    case = 0 if rng.random() < 0.03 else rng.randint(1, 7)
    if case == 1:
        msg.embedding.values.extend([0.1] * rng.choice([1, 9000]))
    elif case == 2:
        msg.tensors["x"].CopyFrom(pb.Tensor(dtype=rng.randint(0, 7), shape=[rng.randint(-2, 4)] * rng.randint(0, 3),
                                            data=bytes(rng.randint(0, 64))))
    elif case == 3:
        for i in range(rng.randint(33, 40)):
            msg.metadata["k" * rng.choice([1, 70]) + str(i)] = "v" * rng.choice([1, 2000])
    elif case == 4:
        request.request_id = rng.choice(["x" * 200, "a b", "\u00e9"])
    elif case == 5:
        meta.append(("request_id", rng.choice(["x" * 200, "a b"])))
    elif case == 6:
        msg.text.content = "x" * rng.choice([20_001, 1_100_000])
    elif case == 7:
        request = svc.InferRequest(input=pb.Message(classification=pb.Classification(label="positive")),
                                   timeout_ms=rng.choice([0, 1, 2**32 - 1]))
    return request, tuple(meta)


def _replicas() -> set[str]:
    from ray.serve.context import _get_global_client

    app = _get_global_client().get_serve_details()["applications"]["demo"]
    return {r["replica_id"] for d in app["deployments"].values() for r in d["replicas"]}


def test_fuzzed_requests_never_answer_5xx(demo_app):
    before = _replicas()
    started = time.monotonic()
    rng = random.Random(SEED)
    bodies = [_http_body(rng) for _ in range(HTTP_REQUESTS)]
    grpc_requests = [_grpc_request(rng) for _ in range(GRPC_REQUESTS)]
    http_codes: collections.Counter[int] = collections.Counter()
    grpc_codes: collections.Counter[str] = collections.Counter()
    limits = httpx.Limits(max_connections=WORKERS, max_keepalive_connections=WORKERS)
    with httpx.Client(base_url=demo_app.http, timeout=60, limits=limits) as client, \
            grpc.insecure_channel(demo_app.grpc, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
        stub = rpc.GraphServiceStub(channel)

        def http_one(body: bytes) -> int:
            return client.post("/demo", content=body).status_code

        def grpc_one(item: tuple[svc.InferRequest, tuple[tuple[str, str], ...]]) -> str:
            try:
                stub.Infer(item[0], metadata=item[1], timeout=60)
                return grpc.StatusCode.OK.name
            except grpc.RpcError as exc:
                return exc.code().name  # type: ignore[no-any-return]

        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
            grpc_futures = [pool.submit(grpc_one, item) for item in grpc_requests]
            http_codes.update(pool.map(http_one, bodies))
            grpc_codes.update(f.result() for f in grpc_futures)
    print(f"\nfuzz: HTTP {sum(http_codes.values())} {dict(sorted(http_codes.items()))}; "
          f"gRPC {sum(grpc_codes.values())} {dict(sorted(grpc_codes.items()))}; {time.monotonic() - started:.0f} s")
    assert sum(http_codes.values()) + sum(grpc_codes.values()) == TOTAL
    bad_http = {code: n for code, n in http_codes.items() if code >= 500 and code not in (503, 504)}
    assert not bad_http, http_codes
    bad_grpc = {code: n for code, n in grpc_codes.items() if grpc.StatusCode[code] not in _OK_GRPC}
    assert not bad_grpc, grpc_codes
    assert http_codes[200] > 0 and http_codes[400] > 0 and grpc_codes["OK"] > 0  # the mix reached both paths
    assert _replicas() == before, "a replica restarted during fuzzing"
    after = httpx.post(f"{demo_app.http}/demo", json={"input": {"text": {"content": "great, thanks"}}}, timeout=60)
    assert after.status_code == 200 and after.json()["result"]["classification"]["label"] == "positive"
