"""The graph ingress deployment: HTTP and gRPC in, the transport-free executor inside.

It only converts formats and maps errors (one table per transport, see
``transport_errors``); everything about the flow lives in ``modelweave.executor``.

HTTP routes (under the graph's route prefix ``/<graph>``):
    POST /<graph>            InferRequest JSON -> InferResponse JSON
    POST /<graph>/stream     InferRequest JSON -> NDJSON InferEvent lines
    GET  /<graph>/describe   GraphDescription JSON
    GET  /<graph>/healthz    "ok"
gRPC: ``modelweave.v1.GraphService`` (Infer, InferStream, DescribeGraph) via Serve's proxy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from ray.serve.grpc_util import RayServegRPCContext
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from actors.shared_state import ActorCache, ActorState, get_state_actor
from deployments.metrics import RayMetricsSink
from deployments.serve_caller import ServeCaller
from deployments.transport_errors import GRPC_STATUS, HTTP_STATUS
from modelweave.checker import check_graph
from modelweave.codecs import check_request, describe_graph, error_body, parse_infer_json, to_json
from modelweave.errors import InvalidArgument, ModelError, ModelweaveError, NotFound, ResourceExhausted
from modelweave.executor import Executor
from modelweave.observe import TraceMetrics
from modelweave.spec import parse_graph
from modelweave.trace import new_request_id
from modelweave.v1 import messages_pb2 as pb
from modelweave.v1 import service_pb2 as svc

logger = logging.getLogger("modelweave.ingress")

_JSON = "application/json"


class GraphIngress:
    """Runs one graph for HTTP and gRPC clients.

    Args:
        graph: The graph spec as plain data (validated again here: the replica may run
            on another machine with another code version).
        handles: Deployment handle per model node name.
    """

    def __init__(self, graph: dict[str, Any], handles: dict[str, Any]) -> None:
        self.spec = parse_graph(graph, "ingress")
        self.graph = check_graph(self.spec)
        actor = get_state_actor(self.spec)
        self.executor = Executor(
            self.graph,
            ServeCaller(handles),
            cache_factory=lambda path, node: ActorCache(actor, path, node),
            state=ActorState(actor),
        )
        self.description = describe_graph(self.graph)
        self.metrics = TraceMetrics(self.graph, RayMetricsSink())
        self._error_log_budget = 100  # bounded logging of unexpected errors

    # -- shared -----------------------------------------------------------------------

    async def _infer(self, request: svc.InferRequest, request_id: str, on_span: Any = None) -> svc.InferResponse:
        start = time.monotonic()
        try:
            check_request(request, self.spec.limits)
            timeout_s = request.timeout_ms / 1000.0 if request.timeout_ms else None
            result = await self.executor.run(request.input, request_id=request_id, timeout_s=timeout_s,
                                             on_span=on_span)
        except ModelweaveError as exc:
            self.metrics.record(exc.trace, status=exc.status.value, latency_ms=(time.monotonic() - start) * 1e3)
            logger.warning("request %s failed: %s %s", request_id, exc.status.value, exc)
            raise
        self.metrics.record(result.trace, status="OK", latency_ms=(time.monotonic() - start) * 1e3)
        self.metrics.record_feedback(self.executor.feedback_values())
        return svc.InferResponse(result=result.message, trace=result.trace, graph=self.spec.name)

    def _typed(self, exc: BaseException) -> ModelweaveError:
        if isinstance(exc, ModelweaveError):
            return exc
        if self._error_log_budget > 0:
            self._error_log_budget -= 1
            logger.exception("unexpected error in graph %s", self.spec.name, exc_info=exc)
        return ModelError(f"internal error: {type(exc).__name__}")

    # -- HTTP -------------------------------------------------------------------------

    async def __call__(self, request: Request) -> Response:
        # Serve's proxy already answers with an x-request-id header (the client's, when it sent
        # one); the trace carries the id the executor used, which a body request_id overrides.
        request_id = request.headers.get("x-request-id") or new_request_id()
        headers: dict[str, str] = {}
        suffix = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        try:
            if request.method == "GET" and suffix == "describe":
                return Response(to_json(self.description), media_type=_JSON, headers=headers)
            if request.method == "GET" and suffix == "healthz":
                return Response(b"ok", media_type="text/plain", headers=headers)
            if request.method != "POST":
                raise NotFound(f"{request.method} {request.url.path} is not a route; POST /{self.spec.name} "
                               f"or /{self.spec.name}/stream, GET /{self.spec.name}/describe")
            body = await self._read_body(request)
            infer = parse_infer_json(body, self.spec.limits)
            request_id = infer.request_id or request_id
            if suffix == "stream":
                return StreamingResponse(self._http_stream(infer, request_id), media_type="application/x-ndjson",
                                         headers=headers)
            if suffix != self.spec.name:
                raise NotFound(f"unknown route {request.url.path}")
            response = await self._infer(infer, request_id)
            return Response(to_json(response), media_type=_JSON, headers=headers)
        except Exception as exc:
            err = self._typed(exc)
            return Response(error_body(err, request_id), status_code=HTTP_STATUS[err.status], media_type=_JSON,
                            headers=headers)

    async def _read_body(self, request: Request) -> bytes:
        limit = self.spec.limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise InvalidArgument("content-length header is not a number")
            if int(declared) > limit:
                raise ResourceExhausted(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ResourceExhausted(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _http_stream(self, infer: svc.InferRequest, request_id: str) -> AsyncIterator[bytes]:
        async for event in self._events(infer, request_id):
            if isinstance(event, ModelweaveError):
                yield error_body(event, request_id) + b"\n"
                return
            yield to_json(event) + b"\n"

    async def _events(self, infer: svc.InferRequest, request_id: str) -> AsyncIterator[Any]:
        """Yields an InferEvent per finished hop, then the result (or a typed error)."""
        queue: asyncio.Queue[pb.Span] = asyncio.Queue()
        task = asyncio.ensure_future(self._infer(infer, request_id, on_span=queue.put_nowait))
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield svc.InferEvent(span=getter.result())
                    continue
                getter.cancel()
                while not queue.empty():
                    yield svc.InferEvent(span=queue.get_nowait())
                exc = task.exception()
                if exc is not None:
                    yield self._typed(exc)
                else:
                    yield svc.InferEvent(result=task.result())
                return
        finally:
            if not task.done():  # client went away: stop the graph work too
                task.cancel()

    # -- gRPC (method names equal the RPC names; Serve's proxy dispatches on them) ------

    async def Infer(self, request: svc.InferRequest, grpc_context: RayServegRPCContext) -> svc.InferResponse:  # noqa: N802
        """Unary inference."""
        request_id = request.request_id or grpc_context.request_id() or new_request_id()
        try:
            return await self._infer(request, request_id)
        except Exception as exc:
            self._set_grpc_error(grpc_context, self._typed(exc))
            return svc.InferResponse()

    async def InferStream(  # noqa: N802
        self, request: svc.InferRequest, grpc_context: RayServegRPCContext
    ) -> AsyncIterator[svc.InferEvent]:
        """Server-streaming inference: a Span per hop, then the result."""
        request_id = request.request_id or grpc_context.request_id() or new_request_id()
        async for event in self._events(request, request_id):
            if isinstance(event, ModelweaveError):
                self._set_grpc_error(grpc_context, event)
                # A stream's status travels with its messages; with none yet sent, Serve only
                # carries the code we set when the method raises (it then keeps our code).
                raise event
            yield event

    async def DescribeGraph(  # noqa: N802
        self, request: svc.DescribeGraphRequest, grpc_context: RayServegRPCContext
    ) -> svc.GraphDescription:
        """The graph's nodes, edges and message types."""
        return self.description

    @staticmethod
    def _set_grpc_error(grpc_context: RayServegRPCContext, err: ModelweaveError) -> None:
        grpc_context.set_code(GRPC_STATUS.get(err.status, grpc.StatusCode.INTERNAL))
        detail = f"{err.message} (node {err.node})" if err.node else err.message
        grpc_context.set_details(detail)
