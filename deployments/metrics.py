"""``ray.util.metrics`` backend for :mod:`modelweave.observe`.

Series appear on Ray's Prometheus endpoint (and the dashboard's Metrics view) as
``ray_modelweave_<name>``, e.g. ``ray_modelweave_route_decisions_total``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ray.util import metrics as ray_metrics

from modelweave.observe import ATTEMPT_BOUNDARIES, LATENCY_MS_BOUNDARIES, SHADOW_DELTA_BOUNDARIES, PendingCounts

logger = logging.getLogger("modelweave.metrics")

#: Seconds between two hand-overs of the summed counters and latest gauges to Ray. Ray exports
#: to Prometheus every few seconds (``metrics_report_interval_ms``), so a scrape sees at most
#: this much extra delay.
FLUSH_S = 0.5

_COST_BOUNDARIES: list[float] = [0.5, 1, 2, 3, 5, 8, 13, 21, 34, 55, 100]

#: name -> (kind, description, tag keys, histogram boundaries)
_SERIES: dict[str, tuple[str, str, tuple[str, ...], list[float] | None]] = {
    "requests_total": ("counter", "Graph requests by final status", ("graph", "status"), None),
    "auth_total": ("counter", "Authentication checks by token name (never the token) and result",
                   ("graph", "caller", "result"), None),
    "request_latency_ms": ("histogram", "End-to-end graph latency (ms)", ("graph",), LATENCY_MS_BOUNDARIES),
    "request_cost": ("histogram", "Modelled cost units per request", ("graph",), _COST_BOUNDARIES),
    "request_cpu_ms": ("histogram", "Model CPU milliseconds per request", ("graph",), LATENCY_MS_BOUNDARIES),
    "node_calls_total": ("counter", "Hops through a node", ("graph", "node", "kind"), None),
    "node_latency_ms": ("histogram", "Latency of a node (ms)", ("graph", "node", "kind"), LATENCY_MS_BOUNDARIES),
    "node_errors_total": ("counter", "Failed hops by status", ("graph", "node", "code"), None),
    "route_decisions_total": ("counter", "Branches taken by route and split nodes", ("graph", "node", "branch"), None),
    "validation_verdicts_total": ("counter", "Final verdicts of validate nodes", ("graph", "node", "verdict"), None),
    "validation_attempts": ("histogram", "Attempts used by validate nodes", ("graph", "node"), ATTEMPT_BOUNDARIES),
    "escalations_total": ("counter", "Validate nodes that escalated", ("graph", "node"), None),
    "cache_lookups_total": ("counter", "Cache lookups by result (hit, miss, guard_rejected: a semantic near-hit "
                            "the guard refused)", ("graph", "node", "result"), None),
    "modelled_cost_total": ("counter", "Modelled cost units spent per model node", ("graph", "node"), None),
    "feedback_value": ("gauge", "Current value of a feedback variable", ("graph", "state"), None),
    "requests_shed_total": ("counter", "Requests shed by admission control", ("graph", "reason"), None),
    "model_retries_total": ("counter", "Model calls retried after their replica was lost", ("graph", "node"),
                            None),
    "shadow_comparisons_total": ("counter", "Shadow mirrors per compared field: equal, differ, error or shed",
                                 ("graph", "node", "candidate", "field", "result"), None),
    "shadow_score_delta": ("histogram", "Shadow mirrors: |candidate - primary| of a numeric compared field",
                           ("graph", "node", "candidate", "field"), SHADOW_DELTA_BOUNDARIES),
    "state_errors_total": ("counter", "State-actor calls answered degraded (miss / last value)",
                           ("graph", "op", "reason"), None),
}


class RayMetricsSink:
    """Creates the Ray metric objects once per process and forwards observations.

    Histogram observations go to Ray at once (each value lands in its bucket). Counter
    increments are summed per series and gauges keep their latest value
    (:class:`modelweave.observe.PendingCounts`); a daemon thread hands both to Ray every
    ``flush_s`` seconds, and :meth:`close` once more when the replica stops. A replica that is
    killed loses at most ``flush_s`` of counts.

    Args:
        flush_s: Seconds between hand-overs; 0 sends every call at once (no thread).
    """

    def __init__(self, flush_s: float = FLUSH_S) -> None:
        self._pending: PendingCounts | None = PendingCounts() if flush_s > 0 else None
        self._stop = threading.Event()
        self._metrics: dict[str, Any] = {}
        for name, (kind, description, tags, boundaries) in _SERIES.items():
            full = f"modelweave_{name}"
            if kind == "counter":
                self._metrics[name] = ray_metrics.Counter(full, description=description, tag_keys=tags)
            elif kind == "gauge":
                self._metrics[name] = ray_metrics.Gauge(full, description=description, tag_keys=tags)
            else:
                self._metrics[name] = ray_metrics.Histogram(full, description=description,
                                                            boundaries=boundaries or [], tag_keys=tags)
        if self._pending is not None:
            threading.Thread(target=self._flush_every, args=(flush_s,), name="modelweave-metrics",
                             daemon=True).start()

    def inc(self, name: str, tags: dict[str, str], value: float = 1.0) -> None:
        # A series' first increment goes to Ray at once, so a wrong name or tag fails here.
        if self._pending is None or not self._pending.add(name, tags, value):
            self._metrics[name].inc(value, tags=tags)

    def observe(self, name: str, tags: dict[str, str], value: float) -> None:
        self._metrics[name].observe(value, tags=tags)

    def set(self, name: str, tags: dict[str, str], value: float) -> None:
        if self._pending is None or not self._pending.set(name, tags, value):
            self._metrics[name].set(value, tags=tags)

    def flush(self) -> None:
        """Hands the summed counters and the latest gauge values to Ray now."""
        if self._pending is None:
            return
        counts, gauges = self._pending.drain()
        for name, tags, value in counts:
            if value > 0:  # Ray's counters refuse anything else
                self._send("inc", name, tags, value)
        for name, tags, value in gauges:
            self._send("set", name, tags, value)

    def _send(self, method: str, name: str, tags: dict[str, str], value: float) -> None:
        try:
            getattr(self._metrics[name], method)(value, tags=tags)
        except Exception:  # one bad series (a wrong name or tag) must not drop the others
            logger.exception("metric %s %s refused %s", name, tags, value)

    def close(self) -> None:
        """Stops the timer thread after a last :meth:`flush`."""
        self._stop.set()
        self.flush()

    def _flush_every(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            self.flush()
