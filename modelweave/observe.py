"""Turning a request's trace into metrics, independent of the metrics backend.

The executor already records one span per hop; this module derives every metric
from those spans (requests, errors by type, latency, route decisions, verdicts,
attempts, escalations, cache hits, modelled cost), so online serving and batch jobs
count the same way. Backends implement :class:`MetricsSink` (Ray's
``ray.util.metrics`` in ``deployments/metrics.py``; a dict in tests).

Label values are graph names, node paths, branch names and status codes only: all
come from the graph file or a fixed set, so cardinality stays bounded.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol

from modelweave.checker import CheckedGraph
from modelweave.nodes.cache import GUARD_REJECTED
from modelweave.spec import ModelNode
from modelweave.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    from modelweave.shadow_outcome import ShadowOutcome

#: Latency histogram boundaries in milliseconds.
LATENCY_MS_BOUNDARIES: list[float] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
#: Boundaries of |candidate - primary| of a numeric field compared by a shadow node.
SHADOW_DELTA_BOUNDARIES: list[float] = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
#: Validation attempt histogram boundaries.
ATTEMPT_BOUNDARIES: list[float] = [1, 2, 3, 4, 5, 6, 8, 10]


class MetricsSink(Protocol):
    """A metrics backend."""

    def inc(self, name: str, tags: dict[str, str], value: float = 1.0) -> None:
        """Adds ``value`` to a counter."""
        ...

    def observe(self, name: str, tags: dict[str, str], value: float) -> None:
        """Records one histogram observation."""
        ...

    def set(self, name: str, tags: dict[str, str], value: float) -> None:
        """Sets a gauge."""
        ...


class TraceMetrics:
    """Records the metrics of finished requests from their traces.

    Args:
        graph: The checked graph (for model costs).
        sink: Where the numbers go.
    """

    def __init__(self, graph: CheckedGraph, sink: MetricsSink) -> None:
        self.graph = graph.spec.name
        self.sink = sink
        self._cost = {path: info.node.cost for path, info in graph.nodes.items() if isinstance(info.node, ModelNode)}

    def record(self, trace: pb.Trace | None, *, status: str, latency_ms: float) -> None:
        """Records one request (``status`` is ``OK`` or the error's status name)."""
        g = self.graph
        self.sink.inc("requests_total", {"graph": g, "status": status})
        self.sink.observe("request_latency_ms", {"graph": g}, latency_ms)
        if trace is None:
            return
        cost = 0.0
        cpu_ms = 0.0
        for span in trace.spans:
            cpu_ms += span.cpu_ms
            node = {"graph": g, "node": span.node}
            by_kind = {"graph": g, "node": span.node, "kind": span.kind}
            self.sink.inc("node_calls_total", by_kind)
            self.sink.observe("node_latency_ms", by_kind, span.latency_ms)
            if span.error:
                self.sink.inc("node_errors_total", {**node, "code": span.error})
            if span.kind in ("route", "split") and span.route:
                self.sink.inc("route_decisions_total", {**node, "branch": span.route})
            if span.kind == "validate":
                self.sink.inc("validation_verdicts_total", {**node, "verdict": span.verdict or "none"})
                self.sink.observe("validation_attempts", node, float(span.attempt))
                if span.route == "escalate":
                    self.sink.inc("escalations_total", node)
            if span.kind == "cache":
                result = "hit" if span.cache_hit else (
                    "guard_rejected" if span.detail.startswith(GUARD_REJECTED) else "miss")
                self.sink.inc("cache_lookups_total", {**node, "result": result})
            if span.kind == "model" and span.retry and not span.error:
                self.sink.inc("model_retries_total", node, float(span.retry))
            if span.kind == "model" and not span.error:
                node_cost = self._cost.get(span.node, 0.0)
                if node_cost:
                    self.sink.inc("modelled_cost_total", node, node_cost)
                    cost += node_cost
        self.sink.observe("request_cost", {"graph": g}, cost)
        self.sink.observe("request_cpu_ms", {"graph": g}, cpu_ms)

    def record_shed(self, reason: str) -> None:
        """Counts one request shed by admission control (``queue_full`` or ``deadline``)."""
        self.sink.inc("requests_shed_total", {"graph": self.graph, "reason": reason})

    def record_shadow(self, outcome: ShadowOutcome) -> None:
        """Counts one mirrored run of a shadow node: per compared field equal / differ, error or shed.

        A run whose primary failed has nothing to compare and is not counted here (the
        request's own metrics count the failure).
        """
        tags = {"graph": self.graph, "node": outcome.node, "candidate": outcome.candidate}
        if outcome.result in ("error", "shed"):
            for name in outcome.compare:
                self.sink.inc("shadow_comparisons_total", {**tags, "field": name, "result": outcome.result})
            return
        for f in outcome.fields if outcome.result == "compared" else ():
            self.sink.inc("shadow_comparisons_total",
                          {**tags, "field": f.field, "result": "equal" if f.equal else "differ"})
            if f.delta is not None:
                self.sink.observe("shadow_score_delta", {**tags, "field": f.field}, abs(f.delta))

    def record_feedback(self, values: dict[str, float]) -> None:
        """Publishes the current feedback variables (e.g. an adaptive escalation threshold)."""
        for state, value in values.items():
            self.sink.set("feedback_value", {"graph": self.graph, "state": state}, value)


class PendingCounts:
    """Counter increments and gauge values held in process until the next :meth:`drain`.

    Why: a ``ray.util.metrics`` counter call costs ~4.5 us of CPU in the caller (tag merging
    and checks, then the C++ recorder), and a triage request makes 26 of them; adding to a
    dict costs ~0.3 us. Ray exports metrics every few seconds anyway, so summing increments
    for a fraction of a second changes nothing a scrape sees. Gauges keep only their latest
    value (a per-request feedback gauge was one Ray call per request). Thread-safe: the
    drain runs on a timer thread while requests add on the event loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        # Series ever added to; bounded: label values come from the graph file or fixed sets.
        self._seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()

    def add(self, name: str, tags: dict[str, str], value: float = 1.0) -> bool:
        """Adds ``value`` to the pending sum of one counter series.

        Returns:
            False, without adding, the first time the series is seen: the caller records that
            increment itself, so a wrong name or tag fails at the call, as without summing.
        """
        key = (name, tuple(tags.items()))
        with self._lock:
            if key not in self._seen:
                self._seen.add(key)
                return False
            self._counts[key] = self._counts.get(key, 0.0) + value
        return True

    def set(self, name: str, tags: dict[str, str], value: float) -> bool:
        """Remembers the latest value of one gauge series.

        Returns:
            False the first time the series is seen (the caller sets it itself, as for
            :meth:`add`); the value is remembered either way.
        """
        key = (name, tuple(tags.items()))
        with self._lock:
            first = key not in self._gauges
            self._gauges[key] = value
        return not first

    def drain(self) -> tuple[list[tuple[str, dict[str, str], float]], list[tuple[str, dict[str, str], float]]]:
        """Returns and forgets the pending counter sums; returns (and keeps) every gauge's value.

        Gauges are kept so each drain sets them again: the value stays current however
        rarely it changes.
        """
        with self._lock:
            counts, self._counts = self._counts, {}
            gauges = list(self._gauges.items())
        return ([(name, dict(tags), value) for (name, tags), value in counts.items()],
                [(name, dict(tags), value) for (name, tags), value in gauges])


class DictSink:
    """In-memory sink (tests, batch summaries)."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.histograms: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}
        self.gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    @staticmethod
    def _key(name: str, tags: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
        return name, tuple(sorted(tags.items()))

    def inc(self, name: str, tags: dict[str, str], value: float = 1.0) -> None:
        key = self._key(name, tags)
        self.counters[key] = self.counters.get(key, 0.0) + value

    def observe(self, name: str, tags: dict[str, str], value: float) -> None:
        self.histograms.setdefault(self._key(name, tags), []).append(value)

    def set(self, name: str, tags: dict[str, str], value: float) -> None:
        self.gauges[self._key(name, tags)] = value

    def counter(self, name: str, **tags: str) -> float:
        """Value of one counter series (0 when never incremented)."""
        return self.counters.get(self._key(name, tags), 0.0)
