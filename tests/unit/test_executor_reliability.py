"""Executor reliability: retries of lost replicas, deadline budget per hop, degraded answers not cached."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fakes import build, graph, model, spans_of, text

from modelweave.errors import DeadlineExceeded, ModelError, Overloaded, ReplicaLost, Unavailable
from modelweave.executor import Executor, ModelReply
from modelweave.local import LocalCaller
from modelweave.model_calls import predict_rows
from modelweave.retry import RetryBudget
from modelweave.spec import ModelNode
from modelweave.trace import request_deadline
from modelweave.v1 import messages_pb2 as pb

pytestmark = pytest.mark.timeout(10)


def chain(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "chain", "name": "main", "steps": list(steps)}


class Flaky:
    """Wraps a caller: the first ``failures`` calls of ``name`` raise ``error``."""

    def __init__(self, inner: LocalCaller, name: str, failures: int, error: type[Unavailable] = ReplicaLost):
        self.inner, self.name, self.failures, self.error = inner, name, failures, error
        self.tries = 0
        self.deadlines: list[float | None] = []

    async def call(self, model: ModelNode, message: pb.Message) -> ModelReply:
        self.deadlines.append(request_deadline.get())
        if model.name == self.name:
            self.tries += 1
            if self.tries <= self.failures:
                raise self.error(f"model {model.name!r} is unavailable: ActorDiedError")
        return await self.inner.call(model, message)


def flaky(flow: dict[str, Any], name: str, failures: int, error: type[Unavailable] = ReplicaLost,
          **executor_kw: Any) -> tuple[Executor, Flaky]:
    ex, inner = build(graph(flow))
    wrapped = Flaky(inner, name, failures, error)
    return Executor(ex.graph, wrapped, **executor_kw), wrapped


async def test_lost_replica_is_retried_and_the_retry_is_in_the_trace():
    ex, caller = flaky(chain(model("a", "Label", label="ok")), "a", failures=2)
    result = await ex.run(text())
    assert result.message.classification.label == "ok"
    assert caller.tries == 3
    spans = spans_of(result.trace, "model")
    assert [(s.retry, s.error) for s in spans] == [(0, "UNAVAILABLE"), (1, "UNAVAILABLE"), (2, "")]
    assert "ActorDiedError" in spans[0].detail


async def test_non_idempotent_model_is_not_retried():
    node = {**model("a", "Label"), "idempotent": False}
    ex, caller = flaky(chain(node), "a", failures=1)
    with pytest.raises(ReplicaLost):
        await ex.run(text())
    assert caller.tries == 1


async def test_overload_is_not_retried():
    ex, caller = flaky(chain(model("a", "Label")), "a", failures=1, error=Overloaded)
    with pytest.raises(Overloaded):
        await ex.run(text())
    assert caller.tries == 1


async def test_retries_stop_when_the_budget_is_spent():
    budget = RetryBudget(ratio=0.0, min_per_s=0.1, window_s=10.0)  # holds exactly one retry
    ex, caller = flaky(chain(model("a", "Label")), "a", failures=5, retry_budget=budget)
    with pytest.raises(ReplicaLost):
        await ex.run(text())
    assert caller.tries == 2  # one retry was in the budget
    assert budget.refused == 1


async def test_retries_stop_at_the_deadline():
    ex, caller = flaky(chain(model("a", "Label")), "a", failures=10_000)
    with pytest.raises((ReplicaLost, DeadlineExceeded)):
        await ex.run(text(), timeout_s=0.3)
    assert 1 < caller.tries < 100


async def test_every_call_carries_the_request_deadline():
    ex, caller = flaky(chain(model("a", "Label"), model("b", "Tag", suffix="!")), "a", failures=0)
    before = time.time()
    await ex.run(text(), timeout_s=5.0)
    assert len(caller.deadlines) == 2
    for deadline in caller.deadlines:
        assert deadline is not None and before + 4.5 < deadline < time.time() + 5.0
    assert request_deadline.get() is None  # not leaked past the run


async def test_a_hop_that_cannot_finish_in_the_remaining_budget_is_not_started():
    ex, caller = build(graph(chain(model("first", "Tag", suffix="-"), model("slow", "Label"))))
    ex.hop_s["slow"] = 5.0  # learned: this model typically takes 5 s
    spans: list[pb.Span] = []
    with pytest.raises(DeadlineExceeded, match="cannot cover model 'slow'") as info:
        await ex.run(text(), timeout_s=1.0, on_span=spans.append)
    assert info.value.node == "g/main/slow"
    assert caller.adapters["slow"].calls == 0
    assert spans[-1].detail == "not started: deadline too close"


async def test_typical_hop_latency_is_learned_from_successful_calls():
    ex, _ = build(graph(chain(model("a", "Label"))))
    await ex.run(text())
    assert 0 <= ex.hop_s["a"] < 1.0


def test_calls_that_waited_out_a_restart_do_not_make_a_fast_model_look_slow():
    ex, _ = build(graph(chain(model("a", "Label"))))
    for _ in range(20):
        ex.observe_hop("a", 0.010)
    for _ in range(12):  # the calls queued while the only replica restarted, answered ~11 s later
        ex.observe_hop("a", 11.0)
    assert ex.hop_s["a"] == pytest.approx(0.010)  # a request with 5 s left still calls it
    for _ in range(32):  # a model that really became slow is learned as slow
        ex.observe_hop("a", 3.0)
    assert ex.hop_s["a"] == pytest.approx(3.0)


def test_the_typical_latency_is_the_windows_quantile_after_every_call():
    # observe_hop keeps the window sorted incrementally; it must give what sorting it each time gives.
    import random
    from collections import deque

    from modelweave.executor import _HOP_QUANTILE, _HOP_WINDOW

    ex, _ = build(graph(chain(model("a", "Label"))))
    rng = random.Random(7)
    window: deque[float] = deque(maxlen=_HOP_WINDOW)
    for _ in range(500):
        seconds = rng.choice([0.01, 0.02, 0.5, rng.random()])  # repeats: equal values leave in order
        ex.observe_hop("a", seconds)
        window.append(seconds)
        assert ex.hop_s["a"] == sorted(window)[int(_HOP_QUANTILE * (len(window) - 1))]


def test_request_ids_are_hex_uuid4():
    import uuid

    from modelweave.trace import new_request_id

    ids = {new_request_id() for _ in range(200)}
    assert len(ids) == 200
    for rid in ids:
        parsed = uuid.UUID(hex=rid)
        assert parsed.hex == rid and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def cached(body: dict[str, Any]) -> dict[str, Any]:
    return graph({"kind": "cache", "name": "c", "body": body})


async def test_a_fallback_answer_is_not_cached():
    body = {**model("bad", "Fail"), "fallback": model("backup", "Label", label="degraded")}
    ex, caller = build(cached(body))
    first = await ex.run(text("same"))
    second = await ex.run(text("same"))
    assert first.message.classification.label == second.message.classification.label == "degraded"
    assert caller.adapters["bad"].calls == 2  # the second request tried the real model again
    cache_spans = spans_of(second.trace, "cache")
    assert not cache_spans[0].cache_hit
    assert cache_spans[0].detail.startswith("not stored: degraded answer")


async def test_an_answer_accepted_after_exhausted_validation_is_not_cached():
    body = {"kind": "validate", "name": "v", "max_attempts": 2,
            "target": model("gen", "Gen", text="never good"), "validator": model("judge", "Judge")}
    ex, caller = build(cached(body))
    await ex.run(text("same"))
    second = await ex.run(text("same"))
    assert caller.adapters["gen"].calls == 4
    assert not spans_of(second.trace, "cache")[0].cache_hit


async def test_a_good_answer_is_still_cached():
    body = {**model("good", "Label"), "fallback": model("backup", "Label", label="degraded")}
    ex, caller = build(cached(body))
    await ex.run(text("same"))
    second = await ex.run(text("same"))
    assert spans_of(second.trace, "cache")[0].cache_hit
    assert caller.adapters["good"].calls == 1


# -- one outcome per row (online dynamic batching and batch pools share this) -------------


def test_a_failing_row_fails_alone():
    from fakes import LabelFromText

    class Picky(LabelFromText):
        def predict(self, batch):  # type: ignore[no-untyped-def]
            if any(m.text.content == "poison" for m in batch):
                raise ValueError("cannot read 'poison'")
            return super().predict(batch)

    adapter = Picky()
    batch = [text("a"), text("poison"), text("b")]
    outcomes = predict_rows(adapter, batch)
    assert [o.part.label for o in outcomes if isinstance(o, ModelReply)] == ["a", "b"]
    assert isinstance(outcomes[1], ModelError)
    assert "cannot read 'poison'" in outcomes[1].message


def test_rows_whose_deadline_passed_are_skipped_not_run():
    from fakes import LabelFromText

    adapter = LabelFromText()
    now = time.time()
    outcomes = predict_rows(adapter, [text("late"), text("on time")], [now - 1.0, now + 60.0])
    assert isinstance(outcomes[0], DeadlineExceeded)
    assert isinstance(outcomes[1], ModelReply) and outcomes[1].part.label == "on time"
    assert [m.text.content for m in adapter.seen] == ["on time"]


async def test_cancelling_a_request_cancels_its_model_call():
    started = asyncio.Event()
    cancelled = asyncio.Event()

    class Hanging:
        async def call(self, model: ModelNode, message: pb.Message) -> ModelReply:
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            raise AssertionError("unreachable")

    ex, _ = build(graph(chain(model("a", "Label"))))
    task = asyncio.create_task(Executor(ex.graph, Hanging()).run(text()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()
