"""Per-request context and trace recording."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from modelweave import speculation
from modelweave.v1 import messages_pb2 as pb

#: Wall-clock (Unix time) deadline of the request the current task runs. The executor sets
#: it; model callers send it along with every call so a replica skips work whose caller has
#: already given up (a ContextVar, so every caller protocol stays unchanged and parallel
#: branches inherit it).
request_deadline: ContextVar[float | None] = ContextVar("modelweave_request_deadline", default=None)

#: Wall-clock deadline after which no caller waits for the adapter call this thread runs: the
#: latest deadline of its rows, None when a row has none. :func:`modelweave.model_calls.predict_rows`
#: sets it; an adapter that can stop its model early reads it (a hung child process is stopped
#: instead of holding the model for every later call: :mod:`modelweave.process_isolation`).
rows_deadline: ContextVar[float | None] = ContextVar("modelweave_rows_deadline", default=None)

#: Monotonic time by which the innermost enclosing node with its own ``timeout_s`` must end
#: (None: no such node). The executor sets it around such a node; a model call cut off by it
#: records its span as DEADLINE_EXCEEDED, as one cut off by the request's deadline does.
node_deadline: ContextVar[float | None] = ContextVar("modelweave_node_deadline", default=None)

#: W3C trace context ``(traceparent, tracestate)`` of the request the current task runs (see
#: :mod:`modelweave.otel`). The ingress sets it; model callers send it along with every call,
#: like the deadline, so adapters that call external services pass it on (:func:`trace_headers`).
request_trace: ContextVar[tuple[str, str] | None] = ContextVar("modelweave_request_trace", default=None)

#: Trace context per envelope (by identity) while a replica runs a batch: the rows of one batch
#: belong to different requests.
_row_traces: ContextVar[dict[int, tuple[str, str]] | None] = ContextVar("modelweave_row_traces", default=None)


def trace_headers(message: pb.Message | None = None) -> dict[str, str]:
    """HTTP headers (``traceparent``, ``tracestate``) that pass the request's trace on.

    Args:
        message: The envelope the outgoing call is made for (selects its row in a batch).

    Returns:
        The headers; empty when the request carries no trace context.
    """
    rows = _row_traces.get()
    context = rows.get(id(message)) if rows is not None and message is not None else None
    if context is None:
        context = request_trace.get()
    if context is None:
        return {}
    traceparent, tracestate = context
    return {"traceparent": traceparent, "tracestate": tracestate} if tracestate else {"traceparent": traceparent}


@contextmanager
def row_traces(batch: Sequence[pb.Message], contexts: Sequence[tuple[str, str] | None]) -> Iterator[None]:
    """Makes :func:`trace_headers` answer each envelope of ``batch`` with its own request's context.

    Threads started inside (``asyncio.to_thread``) see it; the envelopes must be the same
    objects the adapter gets.
    """
    rows = {id(m): c for m, c in zip(batch, contexts, strict=True) if c is not None}
    token = _row_traces.set(rows or None)
    try:
        yield
    finally:
        _row_traces.reset(token)


def new_request_id() -> str:
    """A fresh request id (hex uuid4)."""
    # What uuid.uuid4().hex returns, without building a UUID object (3x faster, once per request).
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


@dataclass
class RequestContext:
    """State of one request while the executor runs it."""

    request_id: str
    deadline: float
    started: float = field(default_factory=time.monotonic)
    spans: list[pb.Span] = field(default_factory=list)
    on_span: Callable[[pb.Span], None] | None = None
    #: Degraded answers produced so far (a fallback ran, or validation was exhausted and
    #: the last attempt accepted); cache nodes do not store what a degraded run produced.
    degraded: int = 0

    def elapsed_ms(self) -> float:
        """Milliseconds since the request started."""
        return (time.monotonic() - self.started) * 1000.0

    def offset_ms(self, at: float) -> float:
        """Milliseconds from the request's start to ``at`` (a ``time.monotonic()`` reading).

        A span whose record is written when its node ends (cache, route, validate, ...)
        gives its node's start here, so that ``start_ms`` + ``latency_ms`` is where it ended
        and an exported trace nests its children inside it.
        """
        return (at - self.started) * 1000.0

    def mark_degraded(self) -> None:
        """Counts one degraded answer (a fallback ran, a validation was exhausted), here and in
        every enclosing speculation, which takes it back if a cache hit discards the work."""
        self.degraded += 1
        speculation.note_degraded()

    def remaining_s(self) -> float:
        """Seconds left before the deadline (may be negative)."""
        return self.deadline - time.monotonic()

    def record(self, span: pb.Span) -> None:
        """Adds a finished hop to the trace and notifies streaming listeners."""
        self.spans.append(span)
        if self.on_span is not None:
            self.on_span(span)

    def trace(self) -> pb.Trace:
        """The trace so far."""
        return pb.Trace(request_id=self.request_id, spans=self.spans, total_ms=self.elapsed_ms())
