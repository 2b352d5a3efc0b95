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
import contextvars
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from ray.serve.grpc_util import RayServegRPCContext
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from actors.shared_state import ActorCache, ActorState, StateLink, get_state_actor
from deployments.metrics import RayMetricsSink
from deployments.serve_caller import ServeCaller
from deployments.transport_errors import GRPC_STATUS, HTTP_STATUS
from modelweave.admission import AdmissionController
from modelweave.auth import TokenVerifier
from modelweave.checker import check_graph
from modelweave.codecs import (
    check_request,
    check_request_id,
    describe_graph,
    error_body,
    parse_infer_json,
    public_message,
    to_json,
)
from modelweave.errors import (
    InvalidArgument,
    ModelError,
    ModelweaveError,
    NotFound,
    Overloaded,
    ResourceExhausted,
    Status,
    Unauthenticated,
    Unavailable,
)
from modelweave.executor import Executor
from modelweave.local import LocalCaller
from modelweave.observe import TraceMetrics
from modelweave.spec import parse_graph
from modelweave.trace import new_request_id
from modelweave.v1 import messages_pb2 as pb
from modelweave.v1 import service_pb2 as svc

logger = logging.getLogger("modelweave.ingress")

_JSON = "application/json"

#: Token name of the request being served, for log lines deep in the call (a context variable:
#: tasks started for a request copy it, concurrent requests do not share it).
_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("modelweave_caller", default="")


class GraphIngress:
    """Runs one graph for HTTP and gRPC clients.

    Args:
        graph: The graph spec as plain data (validated again here: the replica may run
            on another machine with another code version).
        handles: Deployment handle per model deployment name (see :mod:`modelweave.layout`).
    """

    def __init__(self, graph: dict[str, Any], handles: dict[str, Any]) -> None:
        self.spec = parse_graph(graph, "ingress")
        self.graph = check_graph(self.spec)
        sink = RayMetricsSink()
        # Timeouts, breaker and degraded answers when the state actor is down: actors/backends.py.
        link = StateLink(get_state_actor(self.spec), self.spec.name, sink=sink)
        self.executor = Executor(
            self.graph,
            # Cheap nodes placed in the ingress run here, in-process (see modelweave.layout).
            ServeCaller(handles, self.graph.layout, LocalCaller(self.graph, names=self.graph.layout.inline)),
            cache_factory=lambda path, node: ActorCache(link, path, node),
            state=ActorState(link),
        )
        self.description = describe_graph(self.graph)
        self.metrics = TraceMetrics(self.graph, sink)
        auth = self.spec.ingress.auth
        self.verifier = TokenVerifier(auth.tokens) if auth is not None else None
        admission = self.spec.ingress.admission
        self.admission = AdmissionController(admission.max_concurrent, admission.max_queued,
                                             on_shed=self.metrics.record_shed)
        self._error_log_budget = 100  # bounded logging of unexpected errors

    # -- shared -----------------------------------------------------------------------

    async def _infer(self, request: svc.InferRequest, request_id: str, on_span: Any = None) -> svc.InferResponse:
        start = time.monotonic()
        try:
            check_request(request, self.spec.limits, self.spec.input)
            budget_s = request.timeout_ms / 1000.0 if request.timeout_ms else self.spec.timeout_s
            deadline = start + budget_s
            async with self.admission.admit(deadline):
                # Time spent queued counts against the request's deadline.
                result = await self.executor.run(request.input, request_id=request_id,
                                                 timeout_s=max(deadline - time.monotonic(), 1e-3), on_span=on_span)
        except ModelweaveError as exc:
            self.metrics.record(exc.trace, status=exc.status.value, latency_ms=(time.monotonic() - start) * 1e3)
            if not isinstance(exc, Overloaded):  # shedding is counted, not logged per request
                logger.warning("request %s (caller %s) failed: %s %s", request_id, _CALLER.get(), exc.status.value,
                               exc)
            raise
        self.metrics.record(result.trace, status="OK", latency_ms=(time.monotonic() - start) * 1e3)
        self.metrics.record_feedback(self.executor.feedback_values())
        return svc.InferResponse(result=result.message, trace=result.trace, graph=self.spec.name)

    def _authenticate(self, authorization: str | None) -> str:
        """Returns the caller's token name ("" when the graph has no auth); counts the outcome.

        Raises:
            Unauthenticated: missing or wrong token (counted under caller "unknown").
        """
        if self.verifier is None:
            return ""
        try:
            caller = self.verifier.verify(authorization)
        except Unauthenticated:
            self.metrics.sink.inc("auth_total", {"graph": self.spec.name, "caller": "unknown", "result": "denied"})
            raise
        self.metrics.sink.inc("auth_total", {"graph": self.spec.name, "caller": caller, "result": "ok"})
        _CALLER.set(caller)
        return caller

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
        request_id = new_request_id()  # answered with errors until a valid client id is known
        headers: dict[str, str] = {}
        suffix = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        try:
            if request.method == "GET" and suffix == "healthz":  # open: load balancers probe it
                return Response(b"ok", media_type="text/plain", headers=headers)
            header_id = request.headers.get("x-request-id")
            if header_id:
                request_id = check_request_id(header_id, "x-request-id header")
            caller = self._authenticate(request.headers.get("authorization"))
            if request.method == "GET" and suffix == "describe":
                return Response(to_json(self.description), media_type=_JSON, headers=headers)
            if request.method != "POST":
                raise NotFound(f"{request.method} {request.url.path} is not a route; POST /{self.spec.name} "
                               f"or /{self.spec.name}/stream, GET /{self.spec.name}/describe")
            body = await self._read_body(request)
            infer = parse_infer_json(body, self.spec.limits)
            if infer.request_id:
                request_id = check_request_id(infer.request_id)
            if suffix == "stream":
                return StreamingResponse(self._http_stream(infer, request_id, caller),
                                         media_type="application/x-ndjson", headers=headers)
            if suffix != self.spec.name:
                raise NotFound(f"unknown route {request.url.path}")
            response = await self._infer(infer, request_id)
            response.trace.caller = caller
            return Response(to_json(response), media_type=_JSON, headers=headers)
        except Exception as exc:
            err = self._typed(exc)
            if err.status is Status.UNAUTHENTICATED:
                headers["www-authenticate"] = "Bearer"
            if isinstance(err, Unavailable):
                headers["Retry-After"] = str(_retry_after(err))
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

    async def _http_stream(self, infer: svc.InferRequest, request_id: str, caller: str) -> AsyncIterator[bytes]:
        async for event in self._events(infer, request_id, caller):
            if isinstance(event, ModelweaveError):
                yield error_body(event, request_id) + b"\n"
                return
            yield to_json(event) + b"\n"

    async def _events(self, infer: svc.InferRequest, request_id: str, caller: str = "") -> AsyncIterator[Any]:
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
                    response = task.result()
                    response.trace.caller = caller
                    yield svc.InferEvent(result=response)
                return
        finally:
            if not task.done():  # client went away: stop the graph work too
                task.cancel()

    # -- gRPC (method names equal the RPC names; Serve's proxy dispatches on them) ------

    async def Infer(self, request: svc.InferRequest, grpc_context: RayServegRPCContext) -> svc.InferResponse:  # noqa: N802
        """Unary inference."""
        request_id = new_request_id()
        try:
            caller = self._grpc_caller(grpc_context)
            request_id = self._grpc_request_id(request, grpc_context)
            response = await self._infer(request, request_id)
            response.trace.caller = caller
            return response
        except Exception as exc:
            self._set_grpc_error(grpc_context, self._typed(exc), request_id)
            return svc.InferResponse()

    async def InferStream(  # noqa: N802
        self, request: svc.InferRequest, grpc_context: RayServegRPCContext
    ) -> AsyncIterator[svc.InferEvent]:
        """Server-streaming inference: a Span per hop, then the result."""
        request_id = new_request_id()
        try:
            caller = self._grpc_caller(grpc_context)
            request_id = self._grpc_request_id(request, grpc_context)
        except ModelweaveError as exc:
            self._set_grpc_error(grpc_context, exc, request_id)
            raise
        async for event in self._events(request, request_id, caller):
            if isinstance(event, ModelweaveError):
                self._set_grpc_error(grpc_context, event, request_id)
                # A stream's status travels with its messages; with none yet sent, Serve only
                # carries the code we set when the method raises (it then keeps our code).
                raise event
            yield event

    async def DescribeGraph(  # noqa: N802
        self, request: svc.DescribeGraphRequest, grpc_context: RayServegRPCContext
    ) -> svc.GraphDescription:
        """The graph's nodes, edges and message types."""
        try:
            self._grpc_caller(grpc_context)
        except ModelweaveError as exc:
            self._set_grpc_error(grpc_context, exc)
            return svc.GraphDescription()
        return self.description

    def _grpc_caller(self, grpc_context: RayServegRPCContext) -> str:
        # gRPC metadata keys arrive lowercase; the value is the same "Bearer <token>" as HTTP's.
        metadata = dict(grpc_context.invocation_metadata())
        return self._authenticate(metadata.get("authorization"))

    @staticmethod
    def _grpc_request_id(request: svc.InferRequest, grpc_context: RayServegRPCContext) -> str:
        if request.request_id:
            return check_request_id(request.request_id)
        transport_id = grpc_context.request_id()
        return check_request_id(transport_id, "request_id metadata") if transport_id else new_request_id()

    @staticmethod
    def _set_grpc_error(grpc_context: RayServegRPCContext, err: ModelweaveError, request_id: str = "") -> None:
        grpc_context.set_code(GRPC_STATUS.get(err.status, grpc.StatusCode.INTERNAL))
        message = public_message(err, request_id)
        grpc_context.set_details(f"{message} (node {err.node})" if err.node else message)
        if isinstance(err, Unavailable):
            grpc_context.set_trailing_metadata([("retry-after", str(_retry_after(err)))])


def _retry_after(err: Unavailable) -> int:
    """Whole seconds a client should wait before retrying an UNAVAILABLE answer."""
    return max(1, math.ceil(err.retry_after_s if isinstance(err, Overloaded) else 1.0))
