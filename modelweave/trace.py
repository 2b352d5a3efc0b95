"""Per-request context and trace recording."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from modelweave.v1 import messages_pb2 as pb

#: Wall-clock (Unix time) deadline of the request the current task runs. The executor sets
#: it; model callers send it along with every call so a replica skips work whose caller has
#: already given up (a ContextVar, so every caller protocol stays unchanged and parallel
#: branches inherit it).
request_deadline: ContextVar[float | None] = ContextVar("modelweave_request_deadline", default=None)


def new_request_id() -> str:
    """A fresh request id (hex uuid4)."""
    return uuid.uuid4().hex


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
