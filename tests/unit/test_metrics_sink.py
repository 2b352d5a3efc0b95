"""Counter increments summed in process before they reach Ray (``deployments/metrics.py``)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from deployments.metrics import RayMetricsSink
from modelweave.observe import PendingCounts


class FakeMetric:
    """Records what Ray's metric object was asked to do; refuses tags it does not declare."""

    def __init__(self, tag_keys: tuple[str, ...]) -> None:
        self.tag_keys = tag_keys
        self.calls: list[tuple[str, float, dict[str, str]]] = []

    def _check(self, tags: dict[str, str]) -> None:
        if set(tags) != set(self.tag_keys):
            raise ValueError(f"tags {sorted(tags)} != {sorted(self.tag_keys)}")

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self._check(tags)
        self.calls.append(("inc", value, tags))

    def observe(self, value: float, tags: dict[str, str]) -> None:
        self._check(tags)
        self.calls.append(("observe", value, tags))

    def set(self, value: float, tags: dict[str, str]) -> None:
        self._check(tags)
        self.calls.append(("set", value, tags))

    def total(self, **tags: str) -> float:
        return sum(v for kind, v, t in self.calls if kind == "inc" and t == tags)


def sink_with_fakes(flush_s: float) -> tuple[RayMetricsSink, dict[str, FakeMetric]]:
    sink = RayMetricsSink(flush_s=flush_s)
    fakes = {"requests_total": FakeMetric(("graph", "status")),
             "node_calls_total": FakeMetric(("graph", "node", "kind")),
             "request_latency_ms": FakeMetric(("graph",)),
             "feedback_value": FakeMetric(("graph", "state"))}
    sink._metrics.update(fakes)
    return sink, fakes


def test_pending_counts_sum_per_series_and_forget_them_once_drained() -> None:
    pending = PendingCounts()
    assert pending.add("requests_total", {"graph": "g", "status": "OK"}) is False  # first sight: caller sends it
    for _ in range(3):
        assert pending.add("requests_total", {"graph": "g", "status": "OK"}) is True
    pending.add("requests_total", {"graph": "g", "status": "INTERNAL"})
    pending.add("requests_total", {"graph": "g", "status": "INTERNAL"}, 2.5)
    counts, gauges = pending.drain()
    assert sorted((n, tuple(sorted(t.items())), v) for n, t, v in counts) == [
        ("requests_total", (("graph", "g"), ("status", "INTERNAL")), 2.5),
        ("requests_total", (("graph", "g"), ("status", "OK")), 3.0),
    ]
    assert gauges == []
    assert pending.drain() == ([], [])


def test_pending_gauges_keep_their_latest_value_across_drains() -> None:
    pending = PendingCounts()
    assert pending.set("feedback_value", {"graph": "g", "state": "t"}, 0.6) is False
    assert pending.set("feedback_value", {"graph": "g", "state": "t"}, 0.7) is True
    assert pending.drain()[1] == [("feedback_value", {"graph": "g", "state": "t"}, 0.7)]
    assert pending.drain()[1] == [("feedback_value", {"graph": "g", "state": "t"}, 0.7)]  # set again every drain


def test_pending_counts_lose_nothing_under_concurrent_adds_and_drains() -> None:
    pending = PendingCounts()
    tags = {"graph": "g", "status": "OK"}
    pending.add("requests_total", tags)  # first sight, not counted here
    drained: list[float] = []
    stop = threading.Event()

    def drainer() -> None:
        while not stop.is_set():
            drained.extend(v for _, _, v in pending.drain()[0])

    def adder() -> None:
        for _ in range(20_000):
            pending.add("requests_total", tags)

    threads = [threading.Thread(target=adder) for _ in range(4)]
    background = threading.Thread(target=drainer)
    background.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    background.join()
    drained.extend(v for _, _, v in pending.drain()[0])
    assert sum(drained) == 80_000


def test_sink_sends_first_increments_at_once_and_sums_the_rest_until_flushed() -> None:
    sink, fakes = sink_with_fakes(flush_s=3600)  # the timer never fires during the test
    ok = {"graph": "g", "status": "OK"}
    for _ in range(5):
        sink.inc("requests_total", ok)
    sink.observe("request_latency_ms", {"graph": "g"}, 12.0)
    assert fakes["requests_total"].total(**ok) == 1.0  # the first one: name and tags checked by Ray at once
    assert fakes["request_latency_ms"].calls == [("observe", 12.0, {"graph": "g"})]  # histograms go at once
    sink.flush()
    assert fakes["requests_total"].total(**ok) == 5.0
    sink.flush()
    assert fakes["requests_total"].total(**ok) == 5.0  # nothing counted twice
    sink.close()


def test_sink_refuses_a_wrong_series_at_the_call_not_later() -> None:
    sink, _ = sink_with_fakes(flush_s=3600)
    with pytest.raises(KeyError):
        sink.inc("no_such_series", {"graph": "g"})
    with pytest.raises(ValueError, match="tags"):
        sink.inc("requests_total", {"graph": "g"})  # a missing tag
    sink.close()


def test_a_bad_series_in_a_flush_does_not_drop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    sink, fakes = sink_with_fakes(flush_s=3600)
    good = {"graph": "g", "node": "g/a", "kind": "model"}
    sink.inc("node_calls_total", good)
    sink.inc("node_calls_total", good)
    assert sink._pending is not None
    sink._pending.add("node_calls_total", {"graph": "g"})  # slipped past the first-sight check
    sink._pending.add("node_calls_total", {"graph": "g"})
    sink.flush()
    assert fakes["node_calls_total"].total(**good) == 2.0
    assert "refused" in caplog.text
    sink.close()


def test_the_timer_thread_hands_counts_and_gauges_over_and_close_sends_the_rest() -> None:
    sink, fakes = sink_with_fakes(flush_s=0.05)
    ok = {"graph": "g", "status": "OK"}
    sink.inc("requests_total", ok)
    sink.inc("requests_total", ok)
    sink.set("feedback_value", {"graph": "g", "state": "t"}, 0.5)
    sink.set("feedback_value", {"graph": "g", "state": "t"}, 0.65)
    deadline = time.monotonic() + 10
    while fakes["requests_total"].total(**ok) < 2.0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fakes["requests_total"].total(**ok) == 2.0
    assert fakes["feedback_value"].calls[-1] == ("set", 0.65, {"graph": "g", "state": "t"})
    sink.close()
    sink.inc("requests_total", ok)  # after close: summed, sent by the next flush only
    sink.flush()
    assert fakes["requests_total"].total(**ok) == 3.0
    threads = [t for t in threading.enumerate() if t.name == "modelweave-metrics"]
    time.sleep(0.2)
    assert not any(t.is_alive() for t in threads)


def test_flush_s_zero_sends_every_call_at_once() -> None:
    sink, fakes = sink_with_fakes(flush_s=0)
    ok: dict[str, Any] = {"graph": "g", "status": "OK"}
    for _ in range(3):
        sink.inc("requests_total", ok)
    assert fakes["requests_total"].total(**ok) == 3.0
