"""The graph ingress deployment: HTTP and gRPC in, the transport-free executor inside.

It only converts formats and maps errors (one table per transport, see
``transport_errors``); everything about the flow lives in ``modelweave.executor``.

HTTP routes (under the graph's route prefix ``/<graph>``):
    POST /<graph>            InferRequest JSON -> InferResponse JSON
    POST /<graph>/stream     InferRequest JSON -> NDJSON InferEvent lines
    GET  /<graph>/describe   GraphDescription JSON
    GET  /<graph>/healthz    "ok"
gRPC: ``modelweave.v1.GraphService`` (Infer, InferStream, DescribeGraph) via Serve's proxy.

Tracing: a W3C ``traceparent`` / ``tracestate`` (HTTP headers, gRPC metadata) is passed on to
model calls; when this process's ``OTEL_*`` variables ask for export, each request gets a
SERVER span with one child span per hop, and its ``traceparent`` is answered in a response
header / trailing metadata (see ``modelweave.otel``).
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

from actors.backends import KEY_SYNC_S, WRITE_DELAY_S, ActorSemanticCache
from actors.shared_state import ActorCache, ActorState, StateLink, get_state_actor
from deployments.direct_ingress import rebind_after_crash
from deployments.metrics import RayMetricsSink
from deployments.serve_caller import ServeCaller
from deployments.transport_errors import GRPC_STATUS, HTTP_STATUS
from modelweave.admission import AdmissionController, answer_deadline, request_start_age
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
    DeadlineExceeded,
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
from modelweave.executor import Executor, memory_semantic_cache
from modelweave.local import LocalCaller
from modelweave.observe import TraceMetrics
from modelweave.otel import TRACEPARENT, TRACESTATE, GraphTracer, RequestTrace, start_request
from modelweave.spec import parse_graph
from modelweave.trace import new_request_id, request_trace
from modelweave.v1 import messages_pb2 as pb
from modelweave.v1 import service_pb2 as svc

logger = logging.getLogger("modelweave.ingress")

_JSON = "application/json"

#: Token name of the request being served, for log lines deep in the call (a context variable:
#: tasks started for a request copy it, concurrent requests do not share it).
_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("modelweave_caller", default="")
#: The request's X-Request-Start header / metadata (read when admission.trust_request_start).
_REQUEST_START: contextvars.ContextVar[str | None] = contextvars.ContextVar("modelweave_request_start", default=None)


class GraphIngress:
    """Runs one graph for HTTP and gRPC clients.

    Args:
        graph: The graph spec as plain data (validated again here: the replica may run
            on another machine with another code version).
        handles: Deployment handle per model deployment name (see :mod:`modelweave.layout`).
    """

    def __init__(self, graph: dict[str, Any], handles: dict[str, Any]) -> None:
        # Before Serve starts this replica's own servers (after the constructor) under
        # --direct-ingress: a successor of a killed replica must get the port back.
        rebind_after_crash()
        self.spec = parse_graph(graph, "ingress")
        self.graph = check_graph(self.spec)
        sink = RayMetricsSink()
        # Timeouts, breaker and degraded answers when the state actor is down: actors/backends.py.
        # With the key mirror, lookups that reach the actor are rare; writes then wait for the
        # mirror's next pull to carry them instead of going every WRITE_DELAY_S on their own.
        link = self._state_link = StateLink(get_state_actor(self.spec), self.spec.name, sink=sink,
                                            write_delay_s=max(WRITE_DELAY_S, KEY_SYNC_S))
        self.executor = Executor(
            self.graph,
            # Cheap nodes placed in the ingress run here, in-process (see modelweave.layout).
            ServeCaller(handles, self.graph.layout,
                        LocalCaller(self.graph, names=self.graph.layout.inline, serving=True),
                        transport=self.spec.ingress.transport),
            cache_factory=lambda path, node: ActorCache(link, path, node, key_sync_s=KEY_SYNC_S or None),
            semantic_cache_factory=lambda path, node: (
                ActorSemanticCache(link, path, ttl_s=node.ttl_s, max_entries=node.max_entries,
                                   threshold=node.threshold, guard=node.guard)
                if node.scope == "shared" else memory_semantic_cache(path, node)),
            state=ActorState(link),
            # Shadow mirrors run in the background, off the request path; their outcomes become
            # metrics (the node writes its own sink file).
            on_shadow=lambda outcome: self.metrics.record_shadow(outcome),
            shadow_inline=False,
        )
        self.description = describe_graph(self.graph)
        self.metrics = TraceMetrics(self.graph, sink)
        auth = self.spec.ingress.auth
        self.verifier = TokenVerifier(auth.tokens) if auth is not None else None
        admission = self.spec.ingress.admission
        self.admission = AdmissionController(admission.max_concurrent, admission.max_queued,
                                             on_shed=self.metrics.record_shed)
        self._error_log_budget = 100  # bounded logging of unexpected errors
        # OpenTelemetry export, when this process's OTEL_* variables ask for it (else None).
        self.tracer = GraphTracer.from_env(self.spec.name)

    def __del__(self) -> None:
        # Serve calls this when it stops the replica, on its event loop: send the state writes
        # still waiting for a carrier (cache stores, feedback deltas), export the spans still
        # queued and hand the summed metric counts to Ray.
        link = getattr(self, "_state_link", None)
        if link is not None:
            link.flush_now()
        tracer = getattr(self, "tracer", None)
        if tracer is not None:
            tracer.flush()
        metrics = getattr(self, "metrics", None)
        if metrics is not None and isinstance(metrics.sink, RayMetricsSink):
            metrics.sink.close()  # the counts summed since the last hand-over

    # -- shared -----------------------------------------------------------------------

    async def _infer(self, request: svc.InferRequest, request_id: str, on_span: Any = None,
                     trace: RequestTrace | None = None) -> svc.InferResponse:
        start = time.monotonic()
        # Model calls carry the trace context on (see modelweave.trace.request_trace).
        token = request_trace.set(trace.context.headers()) if trace is not None else None
        try:
            check_request(request, self.spec.limits, self.spec.input)
            budget_s = request.timeout_ms / 1000.0 if request.timeout_ms else self.spec.timeout_s
            trusted = self.spec.ingress.admission.trust_request_start
            if trusted:
                # Time queued in front of the ingress (Serve's proxy, a load balancer) counts too.
                start -= request_start_age(_REQUEST_START.get(), time.time(), budget_s)
            deadline = answer_deadline(start, budget_s)
            if trusted and deadline <= time.monotonic():
                raise DeadlineExceeded(f"the request's {budget_s * 1000:.0f} ms budget ran out before it "
                                       "reached the graph (queued in front of the ingress, per X-Request-Start)")
            async with self.admission.admit(deadline):
                if trace is not None:
                    trace.graph_started()
                # Time spent queued counts against the request's deadline.
                result = await self.executor.run(request.input, request_id=request_id,
                                                 timeout_s=max(deadline - time.monotonic(), 1e-3), on_span=on_span)
        except ModelweaveError as exc:
            self.metrics.record(exc.trace, status=exc.status.value, latency_ms=(time.monotonic() - start) * 1e3)
            if not isinstance(exc, Overloaded):  # shedding is counted, not logged per request
                logger.warning("request %s (caller %s) failed: %s %s", request_id, _CALLER.get(), exc.status.value,
                               exc)
            if trace is not None:  # spans of the hops before the failure
                trace.finish(exc.trace, exc.status.value, str(exc))
            raise
        except BaseException as exc:  # unexpected error or cancellation: the request span still ends
            if trace is not None:
                trace.finish(None, "CANCELLED" if isinstance(exc, asyncio.CancelledError) else "INTERNAL",
                             type(exc).__name__)
            raise
        finally:
            if token is not None:
                request_trace.reset(token)
        self.metrics.record(result.trace, status="OK", latency_ms=(time.monotonic() - start) * 1e3)
        self.metrics.record_feedback(self.executor.feedback_values())
        if trace is not None:
            result.trace.trace_id = trace.trace_id
            trace.finish(result.trace, "OK")
        return svc.InferResponse(result=result.message, trace=result.trace, graph=self.spec.name)

    def _trace(self, traceparent: str | None, tracestate: str | None, name: str, caller: str) -> RequestTrace | None:
        """The request's trace context (None: tracing off and the client sent none)."""
        if self.tracer is None and not traceparent:
            return None  # the common case when tracing is off: nothing to build
        return start_request(self.tracer, traceparent, tracestate, name,
                             {"modelweave.caller": caller} if caller else {})

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
            _REQUEST_START.set(request.headers.get("x-request-start"))
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
            traceparent, tracestate = request.headers.get(TRACEPARENT), request.headers.get(TRACESTATE)
            if suffix == "stream":
                trace = self._trace(traceparent, tracestate, f"POST /{self.spec.name}/stream", caller)
                if trace is not None:
                    headers.update(trace.response_headers())
                return StreamingResponse(self._http_stream(infer, request_id, caller, trace),
                                         media_type="application/x-ndjson", headers=headers)
            if suffix != self.spec.name:
                raise NotFound(f"unknown route {request.url.path}")
            trace = self._trace(traceparent, tracestate, f"POST /{self.spec.name}", caller)
            if trace is not None:
                headers.update(trace.response_headers())  # error answers tell the trace too
            response = await self._infer(infer, request_id, trace=trace)
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
            if not (declared.isascii() and declared.isdigit()):  # "²".isdigit() is True; int() refuses it
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

    async def _http_stream(self, infer: svc.InferRequest, request_id: str, caller: str,
                           trace: RequestTrace | None = None) -> AsyncIterator[bytes]:
        async for event in self._events(infer, request_id, caller, trace):
            if isinstance(event, ModelweaveError):
                yield error_body(event, request_id) + b"\n"
                return
            yield to_json(event) + b"\n"

    async def _events(self, infer: svc.InferRequest, request_id: str, caller: str = "",
                      trace: RequestTrace | None = None) -> AsyncIterator[Any]:
        """Yields an InferEvent per finished hop, then the result (or a typed error)."""
        queue: asyncio.Queue[pb.Span] = asyncio.Queue()
        task = asyncio.ensure_future(self._infer(infer, request_id, on_span=queue.put_nowait, trace=trace))
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
        trace = None
        try:
            caller = self._grpc_caller(grpc_context)
            request_id = self._grpc_request_id(request, grpc_context)
            trace = self._grpc_trace(grpc_context, "Infer", caller)
            response = await self._infer(request, request_id, trace=trace)
            response.trace.caller = caller
            return response
        except Exception as exc:
            self._set_grpc_error(grpc_context, self._typed(exc), request_id, trace)
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
        trace = self._grpc_trace(grpc_context, "InferStream", caller)
        async for event in self._events(request, request_id, caller, trace):
            if isinstance(event, ModelweaveError):
                self._set_grpc_error(grpc_context, event, request_id, trace)
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
        _REQUEST_START.set(metadata.get("x-request-start"))  # every RPC authenticates first
        return self._authenticate(metadata.get("authorization"))

    def _grpc_trace(self, grpc_context: RayServegRPCContext, method: str, caller: str) -> RequestTrace | None:
        """The request's trace context from the traceparent / tracestate metadata; told back in trailers."""
        metadata = dict(grpc_context.invocation_metadata())
        trace = self._trace(metadata.get(TRACEPARENT), metadata.get(TRACESTATE),
                            f"modelweave.v1.GraphService/{method}", caller)
        if trace is not None and trace.span is not None:
            grpc_context.set_trailing_metadata(trace.response_headers())
        return trace

    @staticmethod
    def _grpc_request_id(request: svc.InferRequest, grpc_context: RayServegRPCContext) -> str:
        if request.request_id:
            return check_request_id(request.request_id)
        transport_id = grpc_context.request_id()
        return check_request_id(transport_id, "request_id metadata") if transport_id else new_request_id()

    @staticmethod
    def _set_grpc_error(grpc_context: RayServegRPCContext, err: ModelweaveError, request_id: str = "",
                        trace: RequestTrace | None = None) -> None:
        grpc_context.set_code(GRPC_STATUS.get(err.status, grpc.StatusCode.INTERNAL))
        message = public_message(err, request_id)
        grpc_context.set_details(f"{message} (node {err.node})" if err.node else message)
        if isinstance(err, Unavailable):
            # Replaces the trailers set so far (Serve keeps only the last call's): repeat traceparent.
            trailers = trace.response_headers() if trace is not None else []
            grpc_context.set_trailing_metadata([("retry-after", str(_retry_after(err))), *trailers])


def _retry_after(err: Unavailable) -> int:
    """Whole seconds a client should wait before retrying an UNAVAILABLE answer."""
    return max(1, math.ceil(err.retry_after_s if isinstance(err, Overloaded) else 1.0))
