"""OpenTelemetry spans of graph requests, built at the ingress from the finished trace.

The executor already records one :class:`~modelweave.v1.messages_pb2.Span` per hop (graph
path, model, attempt, retry, timing, CPU time, route, verdict, cache hit, error). The
ingress turns that trace into OpenTelemetry spans once the request is done: one SERVER
span per request and one child span per hop, with start/end times derived from the
request's wall-clock start plus each hop's ``start_ms`` / ``latency_ms``. The executor
stays transport-free and nothing is added to the model replicas' critical path.

W3C trace context: a client's ``traceparent`` / ``tracestate`` make the request span a
child of the client's span (same trace id). Model calls carry the request span's
context (see :data:`modelweave.trace.request_trace`) so adapters that call external
services pass it on. With tracing off, a client's context is passed on unchanged.

Export is configured by the standard ``OTEL_*`` environment variables of the ingress
process and is off unless they ask for it (see :func:`exporter_names`); off means no
SDK object is created and a request without a ``traceparent`` costs one ``None`` check.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from modelweave.v1 import messages_pb2 as pb

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

#: version-traceid-parentid-flags; versions above 00 may append fields (W3C Trace Context).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
#: W3C allows 32 list members; a longer header is dropped rather than forwarded.
_MAX_TRACESTATE = 512
#: Exporter entry points by OTLP protocol (the SDK's own names, group ``opentelemetry_traces_exporter``).
_OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
_PACKAGE_OF = {"otlp_proto_http": "opentelemetry-exporter-otlp-proto-http",
               "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc"}
_MAX_DESCRIPTION = 300


@dataclass(frozen=True)
class TraceParent:
    """A parsed W3C trace context.

    Attributes:
        trace_id: 32 lowercase hex digits.
        span_id: 16 lowercase hex digits (the parent span, as seen by the receiver).
        flags: Trace flags (bit 0: sampled).
        tracestate: The ``tracestate`` header ("" when none).
    """

    trace_id: str
    span_id: str
    flags: int = 1
    tracestate: str = ""

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` header value (version 00)."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    def headers(self) -> tuple[str, str]:
        """``(traceparent, tracestate)``, the form :data:`modelweave.trace.request_trace` carries."""
        return self.traceparent, self.tracestate


def parse_traceparent(traceparent: str | None, tracestate: str | None = None) -> TraceParent | None:
    """Reads W3C ``traceparent`` (and ``tracestate``) header values.

    Returns:
        The context, or None when the header is absent or invalid (W3C: the receiver then
        starts a new trace and ignores ``tracestate``).
    """
    if not traceparent:
        return None
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    state = (tracestate or "").strip()
    return TraceParent(trace_id, span_id, int(flags, 16), state if len(state) <= _MAX_TRACESTATE else "")


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """Span exporters the standard ``OTEL_*`` variables ask for; [] means tracing is off.

    ``OTEL_TRACES_EXPORTER`` lists exporter names (``otlp``, ``console``, any installed
    ``opentelemetry_traces_exporter`` entry point; ``none`` for none). Unset, tracing is on
    with ``otlp`` only when an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set: an ingress must not try to export to a
    default endpoint nobody listens on. ``otlp`` follows ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``
    / ``OTEL_EXPORTER_OTLP_PROTOCOL``, default ``http/protobuf`` (the exporter modelweave
    installs). ``OTEL_SDK_DISABLED=true`` turns everything off.

    Raises:
        ValueError: an unsupported OTLP protocol (names the variable).
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    raw = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not raw:
        if not (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
            return []
        raw = "otlp"
    names = []
    for name in (n.strip().lower() for n in raw.split(",")):
        if name in ("", "none"):
            continue
        if name == "otlp":
            variable = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" if environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                        else "OTEL_EXPORTER_OTLP_PROTOCOL")
            protocol = environ.get(variable, "").strip() or "http/protobuf"
            if protocol not in _OTLP_BY_PROTOCOL:
                raise ValueError(f"{variable}={protocol!r} is not supported; use one of {sorted(_OTLP_BY_PROTOCOL)}")
            name = _OTLP_BY_PROTOCOL[protocol]
        names.append(name)
    return names


def load_exporters(names: Sequence[str]) -> list[Any]:
    """Instantiates the named span exporters; each reads its own ``OTEL_*`` settings.

    Raises:
        ValueError: a name no installed package provides (names ``OTEL_TRACES_EXPORTER``).
    """
    exporters = []
    for name in names:
        found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
        if not found:
            hint = f" (pip install {_PACKAGE_OF[name]})" if name in _PACKAGE_OF else ""
            raise ValueError(f"OTEL_TRACES_EXPORTER: no installed span exporter is called {name!r}{hint}")
        exporters.append(found[0].load()())
    return exporters


@functools.cache
def _api() -> Any:
    """The ``opentelemetry.trace`` API module, imported on first use (not at all when tracing is off)."""
    from opentelemetry import trace

    return trace


_PROVIDER_LOCK = threading.Lock()
_PROVIDERS: dict[tuple[str, ...], Any] = {}


def _provider(names: Sequence[str]) -> Any:
    """One tracer provider per process and exporter set (every graph ingress in it shares it).

    Not installed as the global provider: Ray Serve has tracing of its own that may set one.
    """
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    key = tuple(names)
    with _PROVIDER_LOCK:
        provider = _PROVIDERS.get(key)
        if provider is None:
            # Sampler, id generator, resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), span
            # limits and the batch processor's OTEL_BSP_* settings come from the SDK's env handling.
            resource = Resource.create()
            if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
                resource = resource.merge(Resource({SERVICE_NAME: "modelweave"}))
            provider = TracerProvider(resource=resource)
            for exporter in load_exporters(names):
                provider.add_span_processor(BatchSpanProcessor(exporter))
            _PROVIDERS[key] = provider
        return provider


class GraphTracer:
    """Makes the OpenTelemetry spans of one graph's requests.

    Args:
        tracer: An ``opentelemetry.trace.Tracer`` (from an SDK ``TracerProvider``).
        graph: Graph name (attribute ``modelweave.graph`` of request spans).
        provider: The tracer's provider, flushed by :meth:`flush`.
    """

    def __init__(self, tracer: Any, graph: str, provider: Any = None) -> None:
        self.tracer = tracer
        self.graph = graph
        self.provider = provider

    @classmethod
    def from_env(cls, graph: str, environ: Mapping[str, str] | None = None) -> GraphTracer | None:
        """The tracer the process's ``OTEL_*`` variables ask for; None when tracing is off."""
        names = exporter_names(os.environ if environ is None else environ)
        if not names:
            return None
        provider = _provider(names)
        return cls(provider.get_tracer("modelweave"), graph, provider)

    def flush(self, timeout_ms: int = 2000) -> None:
        """Exports the spans still queued (replica shutdown: the process may exit without atexit)."""
        if self.provider is not None:
            self.provider.force_flush(timeout_ms)

    def start(self, parent: TraceParent | None, name: str, attributes: Mapping[str, str]) -> RequestTrace:
        """Starts the request span (SERVER kind), a child of the client's span when it sent one."""
        api = _api()
        context = None
        if parent is not None:
            try:
                state = api.TraceState.from_header([parent.tracestate]) if parent.tracestate else None
            except ValueError:
                state = None
            remote = api.SpanContext(int(parent.trace_id, 16), int(parent.span_id, 16), is_remote=True,
                                     trace_flags=api.TraceFlags(parent.flags), trace_state=state)
            context = api.set_span_in_context(api.NonRecordingSpan(remote))
        start_ns = time.time_ns()
        span = self.tracer.start_span(name, context=context, kind=api.SpanKind.SERVER, start_time=start_ns,
                                      attributes={"modelweave.graph": self.graph, **attributes})
        own = span.get_span_context()
        header = TraceParent(f"{own.trace_id:032x}", f"{own.span_id:016x}", int(own.trace_flags),
                             parent.tracestate if parent is not None else "")
        return RequestTrace(header, span=span, tracer=self, start_ns=start_ns)


class RequestTrace:
    """One request's trace context at the ingress, and its spans when tracing is on.

    Args:
        context: What model calls carry on: the request span's context, or (tracing off)
            the client's unchanged.
        span: The request span (None when tracing is off).
        tracer: Its tracer.
        start_ns: Wall-clock start of the request, in Unix nanoseconds.
    """

    def __init__(self, context: TraceParent, span: Any = None, tracer: GraphTracer | None = None,
                 start_ns: int = 0) -> None:
        self.context = context
        self.span = span
        self.tracer = tracer
        self.start_ns = start_ns
        self.graph_ns = start_ns

    @property
    def trace_id(self) -> str:
        """The W3C trace id (32 hex digits)."""
        return self.context.trace_id

    def response_headers(self) -> list[tuple[str, str]]:
        """Headers (or gRPC trailing metadata) that tell the client the request span's context."""
        return [(TRACEPARENT, self.context.traceparent)] if self.span is not None else []

    def graph_started(self) -> None:
        """Marks when the executor starts (hop ``start_ms`` count from here, not from admission)."""
        if self.span is not None:
            self.graph_ns = time.time_ns()

    def finish(self, trace: pb.Trace | None, status: str, message: str = "",
               attributes: Mapping[str, str] | None = None) -> None:
        """Records one child span per hop of ``trace`` and ends the request span.

        Args:
            trace: The executor's trace (None when the request failed before the graph ran).
            status: ``OK`` or the status code name of the failure.
            message: The failure's message (span status description).
            attributes: More request span attributes (e.g. the caller's token name).
        """
        span, tracer = self.span, self.tracer
        if span is None or tracer is None:
            return
        end_ns = time.time_ns()
        if span.is_recording():  # sampled out: no hop spans either
            api = _api()
            if trace is not None:
                parent = api.set_span_in_context(span)
                for hop in trace.spans:
                    hop_span(tracer.tracer, parent, hop, self.graph_ns)
                span.set_attribute("modelweave.request_id", trace.request_id)
                span.set_attribute("modelweave.hops", len(trace.spans))
            span.set_attribute("modelweave.status", status)
            if attributes:
                span.set_attributes(attributes)
            if status != "OK":
                span.set_status(api.Status(api.StatusCode.ERROR, f"{status}: {message}"[:_MAX_DESCRIPTION]))
        span.end(end_time=end_ns)


def hop_span(tracer: Any, parent: Any, hop: pb.Span, graph_ns: int) -> Any:
    """Records one executor hop as an ended INTERNAL span under ``parent`` (an OTel context).

    Args:
        tracer: The OpenTelemetry tracer.
        parent: Context holding the request span.
        hop: The executor's span.
        graph_ns: Wall-clock (Unix ns) time the executor started; ``hop.start_ms`` counts from it.
    """
    api = _api()
    attributes: dict[str, Any] = {"modelweave.node": hop.node, "modelweave.kind": hop.kind,
                                  "modelweave.attempt": hop.attempt, "modelweave.retry": hop.retry,
                                  "modelweave.cache_hit": hop.cache_hit}
    if hop.model:
        attributes["modelweave.model"] = hop.model
    if hop.kind == "model" or hop.cpu_ms:
        attributes["modelweave.cpu_ms"] = hop.cpu_ms
    if hop.route:
        attributes["modelweave.route"] = hop.route
    if hop.verdict:
        attributes["modelweave.verdict"] = hop.verdict
    if hop.detail:
        attributes["modelweave.detail"] = hop.detail
    if hop.error:
        attributes["modelweave.error"] = hop.error
    start_ns = graph_ns + int(hop.start_ms * 1e6)
    span = tracer.start_span(hop.node, context=parent, kind=api.SpanKind.INTERNAL, start_time=start_ns,
                             attributes=attributes)
    if hop.error:
        span.set_status(api.Status(api.StatusCode.ERROR, hop.error))
    span.end(end_time=start_ns + int(hop.latency_ms * 1e6))
    return span


def start_request(tracer: GraphTracer | None, traceparent: str | None, tracestate: str | None, name: str,
                  attributes: Mapping[str, str]) -> RequestTrace | None:
    """The trace of one incoming request.

    Args:
        tracer: The graph's tracer (None: tracing off).
        traceparent: The client's ``traceparent`` header / metadata value, if any.
        tracestate: Its ``tracestate``.
        name: Request span name (e.g. ``POST /triage``).
        attributes: Request span attributes (transport).

    Returns:
        None when tracing is off and the client sent no valid context (nothing to carry);
        a pass-through context when tracing is off; else a started request span.
    """
    parent = parse_traceparent(traceparent, tracestate) if traceparent else None
    if tracer is None:
        return RequestTrace(parent) if parent is not None else None
    return tracer.start(parent, name, attributes)
