"""Ingress CPU of OpenTelemetry per request: tracing off vs on, on a triage-sized trace (no Ray).

Times (CPU of the calling thread) what the ingress adds to one request (``modelweave.otel.start_request``, then
``RequestTrace.finish`` with the finished trace): with tracing off (no SDK objects; with and
without a client ``traceparent``), and on with the SDK's ``BatchSpanProcessor`` in front of an
exporter that drops everything (so the background export thread's cost is not counted:
what is measured is the request path), for a sampled and an unsampled client trace.

    python benchmarks/otel_overhead.py            # 20 hops (a triage request), 2000 requests
    python benchmarks/otel_overhead.py --hops 40
"""

from __future__ import annotations

import argparse
import time
import timeit
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from modelweave.otel import GraphTracer, start_request
from modelweave.v1 import messages_pb2 as pb

SAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UNSAMPLED = SAMPLED[:-2] + "00"


class _Drop(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def triage_trace(hops: int) -> pb.Trace:
    """A trace shaped like a triage request's: model hops with CPU time, routes, a validate loop."""
    kinds = ["model", "model", "route", "model", "cache", "parallel", "model", "validate"]
    spans = [pb.Span(node=f"triage/main/stage-{i}", kind=kinds[i % len(kinds)], model="pkg.module:Adapter",
                     attempt=1 + i % 2, start_ms=i * 1.5, latency_ms=1.2, cpu_ms=0.8,
                     route="cheap" if i % 4 == 2 else "", verdict="passed" if i % 8 == 7 else "",
                     detail="threshold 0.55" if i % 4 == 2 else "")
             for i in range(hops)]
    return pb.Trace(request_id="0" * 32, spans=spans, total_ms=hops * 1.5)


def per_request_us(tracer: GraphTracer | None, traceparent: str | None, trace: pb.Trace, n: int) -> float:
    """CPU microseconds of ingress work per request, over ``n`` requests."""

    def one() -> None:
        request = start_request(tracer, traceparent, None, "POST /triage", {})
        if request is not None:
            request.graph_started()
            request.finish(trace, "OK")

    # CPU time of this thread: what the ingress's event loop spends, not the export thread's
    # work, and steadier than wall time on a shared machine.
    return min(timeit.repeat(one, number=n, repeat=3, timer=time.thread_time)) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hops", type=int, default=20)
    parser.add_argument("-n", type=int, default=2000, help="requests per timing")
    args = parser.parse_args()
    trace = triage_trace(args.hops)
    # Queue large enough that nothing is dropped while timing (drops would look cheaper).
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Drop(), max_queue_size=200_000, schedule_delay_millis=50))
    tracer = GraphTracer(provider.get_tracer("bench"), "triage")
    rows = [("off, no traceparent", None, None), ("off, client traceparent (passed on)", None, SAMPLED),
            ("on, new trace", tracer, None), ("on, client traceparent", tracer, SAMPLED),
            ("on, client trace not sampled", tracer, UNSAMPLED)]
    print(f"ingress CPU per request, {args.hops} hops ({args.n} requests, best of 3):")
    for label, t, header in rows:
        print(f"  {label:38s} {per_request_us(t, header, trace, args.n):8.1f} us")
    provider.shutdown()


if __name__ == "__main__":
    main()
