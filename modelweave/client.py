"""A small HTTP/gRPC client for humans (``modelweave call``) and tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import grpc
import httpx
from google.protobuf import json_format

from modelweave.codecs import message_from_text
from modelweave.v1 import messages_pb2 as pb
from modelweave.v1 import service_pb2 as svc
from modelweave.v1 import service_pb2_grpc as svc_grpc


def grpc_stub(addr: str) -> svc_grpc.GraphServiceStub:
    """A GraphService stub over an insecure loopback/cluster channel."""
    return svc_grpc.GraphServiceStub(grpc.insecure_channel(addr))


def _metadata(graph: str, token: str) -> tuple[tuple[str, str], ...]:
    auth = (("authorization", f"Bearer {token}"),) if token else ()
    return (("application", graph), *auth)


def infer_grpc(addr: str, graph: str, request: svc.InferRequest, timeout_s: float = 60.0,
               token: str = "") -> svc.InferResponse:
    """Unary gRPC call; ``graph`` goes in the ``application`` metadata Serve routes on."""
    response: svc.InferResponse = grpc_stub(addr).Infer(_with_deadline(request, timeout_s),
                                                        metadata=_metadata(graph, token), timeout=timeout_s)
    return response


def _with_deadline(request: svc.InferRequest, timeout_s: float) -> svc.InferRequest:
    """Copies the gRPC deadline into ``timeout_ms`` unless the request sets one.

    Ray Serve 2.60's gRPC proxy stops the work when the client's deadline expires, but does
    not tell the ingress how long that deadline is; ``timeout_ms`` lets admission control
    refuse at once what it could not finish in time.
    """
    if request.timeout_ms or timeout_s <= 0:
        return request
    copy = svc.InferRequest()
    copy.CopyFrom(request)
    copy.timeout_ms = int(timeout_s * 1000)
    return copy


def stream_grpc(addr: str, graph: str, request: svc.InferRequest, timeout_s: float = 60.0,
                token: str = "") -> Iterator[svc.InferEvent]:
    """Server-streaming gRPC call."""
    yield from grpc_stub(addr).InferStream(_with_deadline(request, timeout_s), metadata=_metadata(graph, token),
                                           timeout=timeout_s)


def _span_line(span: pb.Span) -> str:
    extra = [f"attempt {span.attempt}" if span.attempt > 1 else "", f"route={span.route}" if span.route else "",
             f"verdict={span.verdict}" if span.verdict else "", "cache hit" if span.cache_hit else "",
             f"ERROR {span.error}" if span.error else "", span.detail]
    return f"  {span.latency_ms:8.2f} ms  {span.node} [{span.kind}] " + "  ".join(e for e in extra if e)


def _summary(response: svc.InferResponse, echo: Callable[[str], None]) -> None:
    r = response.result
    if r.HasField("text"):
        echo(f"text:           {r.text.content!r} (language={r.text.language or '?'})")
    if r.HasField("classification"):
        echo(f"classification: {r.classification.label} ({r.classification.confidence:.3f})")
    if r.HasField("generation"):
        echo(f"generation:     {r.generation.text!r}")
    if r.HasField("verdict"):
        echo(f"verdict:        {'passed' if r.verdict.passed else 'failed'} {r.verdict.reason}")
    echo(f"trace {response.trace.request_id} ({response.trace.total_ms:.1f} ms):")
    for span in response.trace.spans:
        echo(_span_line(span))


def call_graph(graph: str, text: str, *, http_url: str, grpc_addr: str | None, stream: bool, timeout_ms: int,
               request_id: str, as_json: bool, echo: Callable[[str], None], token: str = "") -> int:
    """Calls a running graph and prints the outcome; returns a process exit code."""
    request = svc.InferRequest(input=message_from_text(text), request_id=request_id, timeout_ms=timeout_ms)
    if grpc_addr:
        try:
            if stream:
                for event in stream_grpc(grpc_addr, graph, request, token=token):
                    if event.HasField("span"):
                        echo(json_format.MessageToJson(event, indent=None) if as_json else _span_line(event.span))
                    else:
                        echo(json_format.MessageToJson(event.result)) if as_json else _summary(event.result, echo)
                return 0
            response = infer_grpc(grpc_addr, graph, request, token=token)
        except grpc.RpcError as exc:
            echo(f"error: {exc.code().name}: {exc.details()}")
            return 1
        echo(json_format.MessageToJson(response)) if as_json else _summary(response, echo)
        return 0
    body = json_format.MessageToJson(request)
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})}
    url = f"{http_url.rstrip('/')}/{graph}" + ("/stream" if stream else "")
    try:
        with httpx.Client(timeout=120.0) as client:
            if stream:
                with client.stream("POST", url, content=body, headers=headers) as r:
                    for line in r.iter_lines():
                        if not line:
                            continue
                        data = json.loads(line)
                        if "error" in data:
                            echo(f"error: {data['error']['code']}: {data['error']['message']}")
                            return 1
                        event = json_format.ParseDict(data, svc.InferEvent())
                        if as_json:
                            echo(line)
                        elif event.HasField("span"):
                            echo(_span_line(event.span))
                        else:
                            _summary(event.result, echo)
                return 0
            r = client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        echo(f"error: cannot reach {url}: {exc}")
        return 1
    if r.status_code != 200:
        echo(f"error: HTTP {r.status_code}: {r.text}")
        return 1
    if as_json:
        echo(r.text)
    else:
        _summary(json_format.Parse(r.text, svc.InferResponse()), echo)
    return 0
