"""``cache`` with ``speculate: true``: the body starts with the lookup; a hit discards it and its side effects."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fakes import build, graph, model, spans_of, text

from modelweave.errors import DeadlineExceeded, GraphSpecError, ModelError
from modelweave.spec import parse_graph
from modelweave.state import MemoryCache, MemoryState
from modelweave.v1 import messages_pb2 as pb

pytestmark = pytest.mark.timeout(10)


class HeldCache(MemoryCache):
    """A memory cache whose lookups wait for ``release`` while ``hold`` is set (a remote round trip)."""

    def __init__(self) -> None:
        super().__init__(300.0, 100)
        self.hold = False
        self.release = asyncio.Event()
        self.lookups = 0
        self.stores = 0
        self.fail = False

    async def get(self, key: str) -> bytes | None:
        self.lookups += 1
        if self.hold:
            await self.release.wait()
        if self.fail:
            raise ConnectionError("cache down")
        return await super().get(key)

    async def put(self, key: str, value: bytes) -> None:
        self.stores += 1
        await super().put(key, value)


class CountingState(MemoryState):
    def __init__(self) -> None:
        super().__init__()
        self.adjusts = 0

    async def adjust(self, var: Any, delta: float) -> float:
        self.adjusts += 1
        return await super().adjust(var, delta)


def chain(*steps: dict[str, Any], name: str = "main") -> dict[str, Any]:
    return {"kind": "chain", "name": name, "steps": list(steps)}


def cache(body: dict[str, Any], name: str = "c", **extra: Any) -> dict[str, Any]:
    return {"kind": "cache", "name": name, "body": body, "speculate": True, **extra}


def judged(require: str) -> dict[str, Any]:
    """A body with a feedback side effect: a passed verdict lowers the threshold ``thr`` by 0.05."""
    threshold = {"state": "thr", "initial": 0.5, "min": 0.4, "max": 0.8}
    escalate = {"kind": "route", "name": "r", "default": "keep",
                "branches": {"keep": None, "esc": model("strong", "Label", label="strong")},
                "rules": [{"branch": "esc", "when": [{"field": "classification.confidence", "op": "lt",
                                                      "value_from": threshold}]}]}
    check = {"kind": "validate", "name": "v", "target": model("gen", "Gen", text="reply"),
             "validator": model("judge", "Judge", require=require), "max_attempts": 1,
             "feedback": [{"state": "thr", "on_fail": 0.0, "on_pass": -0.05}]}
    return chain(model("cls", "Label", label="pos", confidence=0.65), escalate, check, name="body")


async def run(ex: Any, message: pb.Message | None = None, **kw: Any) -> Any:
    return await asyncio.wait_for(ex.run(message or text(), **kw), timeout=5)


async def wait_until(predicate: Any) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition not reached")


async def test_miss_starts_the_body_before_the_lookup_answers_and_stores_it():
    store = HeldCache()
    ex, caller = build(graph(chain(cache(model("cls", "LabelFromText")), model("after", "Tag", suffix="+"))),
                       cache_factory=lambda path, node: store)
    store.hold = True
    request = asyncio.ensure_future(run(ex, text("hello")))
    await wait_until(lambda: caller.adapters["cls"].calls == 1)  # the body ran while the lookup was out
    assert not request.done()
    store.release.set()
    first = await request
    assert first.message.classification.label == "hello"
    assert store.stores == 1
    span = spans_of(first.trace, "cache")[0]
    assert not span.cache_hit and span.detail == "speculative: body started with the lookup"
    second = await run(ex, text("hello"))  # the stored answer, as without speculation
    assert spans_of(second.trace, "cache")[0].cache_hit
    assert second.message == first.message
    assert caller.adapters["cls"].calls == 1


async def test_answers_match_a_waiting_cache_on_the_same_sequence():
    flow = chain(cache(model("cls", "LabelFromText")), model("after", "Tag", suffix="+"))
    waiting = {**flow, "steps": [{**flow["steps"][0], "speculate": False}, flow["steps"][1]]}
    ex_spec, _ = build(graph(flow))
    ex_wait, _ = build(graph(waiting))
    for content in ("a", "b", "a", "c", "b", "a"):
        got, want = await run(ex_spec, text(content)), await run(ex_wait, text(content))
        assert got.message == want.message
        hits = [s.cache_hit for s in spans_of(got.trace, "cache")]
        assert hits == [s.cache_hit for s in spans_of(want.trace, "cache")]


async def test_hit_discards_the_body_and_its_feedback():
    store, state = HeldCache(), CountingState()
    ex, caller = build(graph(cache(judged(require="reply"))),
                       cache_factory=lambda path, node: store, state=state)
    first = await run(ex)  # a miss: the passed verdict moves the threshold once
    assert state.values["thr"] == pytest.approx(0.45) and state.adjusts == 1
    store.hold = True
    request = asyncio.ensure_future(run(ex))
    # The body runs to its feedback update and waits there for the lookup's verdict.
    await wait_until(lambda: caller.adapters["judge"].calls == 2)
    await asyncio.sleep(0.01)
    assert state.adjusts == 1
    store.release.set()
    second = await request
    assert spans_of(second.trace, "cache")[0].cache_hit
    assert spans_of(second.trace, "cache")[0].detail == "speculative body cancelled"
    assert second.message.generation == first.message.generation
    await asyncio.sleep(0.01)
    assert state.adjusts == 1 and state.values["thr"] == pytest.approx(0.45)  # the discarded run moved nothing
    assert store.stores == 1


async def test_miss_lets_the_feedback_through_once_the_lookup_answers():
    store, state = HeldCache(), CountingState()
    ex, caller = build(graph(cache(judged(require="reply"))),
                       cache_factory=lambda path, node: store, state=state)
    store.hold = True
    request = asyncio.ensure_future(run(ex))
    await wait_until(lambda: caller.adapters["judge"].calls == 1)
    await asyncio.sleep(0.01)
    assert state.adjusts == 0  # held at the gate while the lookup is out
    store.release.set()
    await request
    assert state.adjusts == 1 and state.values["thr"] == pytest.approx(0.45)


async def test_hit_answers_without_waiting_for_a_slow_blocking_body():
    store = HeldCache()
    ex, caller = build(graph(cache(model("slow", "Sleep", seconds=2.0, label="fresh"))),
                       cache_factory=lambda path, node: store)
    await store.put(next(iter(_keys_after(ex, store, text()))), pb.Message(
        classification=pb.Classification(label="cached", confidence=1.0)).SerializeToString())
    start = time.monotonic()
    result = await run(ex)
    assert time.monotonic() - start < 1.0
    assert result.message.classification.label == "cached"
    caller.adapters["slow"].release.set()  # free the abandoned worker thread


def _keys_after(ex: Any, store: HeldCache, message: pb.Message) -> list[str]:
    """The cache key the executor computes for ``message`` (through the node's own payload rule)."""
    from modelweave.nodes.cache import _key_payload
    from modelweave.state import cache_key

    info = ex.graph.nodes["g/c"]
    return [cache_key("g", "g/c", _key_payload(message, info.node, info.reads))]


async def test_lookup_outage_is_a_miss():
    store = HeldCache()
    store.fail = True
    ex, caller = build(graph(cache(model("cls", "LabelFromText"))), cache_factory=lambda path, node: store)
    result = await run(ex, text("hi"))
    assert result.message.classification.label == "hi"
    assert not spans_of(result.trace, "cache")[0].cache_hit


async def test_body_failure_is_the_requests_only_on_a_miss():
    store = HeldCache()
    ex, _ = build(graph(cache(model("bad", "Fail", message="boom"))), cache_factory=lambda path, node: store)
    with pytest.raises(ModelError, match="boom"):
        await run(ex)
    await store.put(_keys_after(ex, store, text())[0], pb.Message(
        classification=pb.Classification(label="cached")).SerializeToString())
    store.hold = True
    request = asyncio.ensure_future(run(ex))
    await asyncio.sleep(0.02)  # the body has failed by now
    store.release.set()
    assert (await request).message.classification.label == "cached"


async def test_deadline_during_the_lookup_cancels_the_body():
    store = HeldCache()
    store.hold = True
    ex, caller = build(graph(cache(model("slow", "Sleep", seconds=2.0))), cache_factory=lambda path, node: store)
    with pytest.raises(DeadlineExceeded):
        await run(ex, timeout_s=0.1)
    await asyncio.sleep(0.01)
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    caller.adapters["slow"].release.set()


async def test_nested_cache_inside_a_hit_stores_nothing():
    outer, inner = HeldCache(), HeldCache()
    flow = cache(chain(cache(model("cls", "LabelFromText"), name="inner", speculate=False),
                       model("after", "Tag", suffix="+"), name="body"), name="c")
    ex, caller = build(graph(flow), cache_factory=lambda path, node: inner if path.endswith("inner") else outer)
    await run(ex, text("x"))
    assert outer.stores == 1 and inner.stores == 1
    inner._data.clear()  # the inner body must run and try to store again
    inner_before = inner.stores
    outer.hold = True
    request = asyncio.ensure_future(run(ex, text("x")))
    await wait_until(lambda: inner.lookups == 2)
    await asyncio.sleep(0.01)
    outer.release.set()
    assert spans_of((await request).trace, "cache")[-1].cache_hit
    await asyncio.sleep(0.01)
    assert inner.stores == inner_before  # the inner store waited for the outer verdict, then was dropped


def test_speculate_is_for_exact_keys():
    with pytest.raises(GraphSpecError, match="flow: .*speculate applies to key: exact only"):
        parse_graph(graph(cache(model("cls", "LabelFromText"), key="semantic"), input=["Text", "Embedding"]))


async def test_shadow_comparison_inside_a_hit_is_discarded():
    store = HeldCache()
    shadow = {"kind": "shadow", "name": "s", "primary": model("cls", "LabelFromText"),
              "candidates": [model("cand", "Label", label="other")], "compare": ["classification.label"]}
    ex, caller = build(graph(cache(shadow)), cache_factory=lambda path, node: store)
    await run(ex, text("x"))
    assert ex.mirrors.count("g/c/s", "compared") == 1
    store.hold = True
    request = asyncio.ensure_future(run(ex, text("x")))
    await wait_until(lambda: caller.adapters["cand"].calls == 2)
    store.release.set()
    assert spans_of((await request).trace, "cache")[0].cache_hit
    await ex.mirrors.drain(1.0)
    assert ex.mirrors.count("g/c/s", "compared") == 1
    assert ex.mirrors.count("g/c/s", "discarded") == 1


async def test_a_hit_leaves_no_span_of_the_cancelled_body():
    held = HeldCache()
    ex, caller = build(graph(chain(cache(model("slow", "Sleep", seconds=2.0)))), cache_factory=lambda *_: held)
    caller.adapters["slow"].release.set()  # the first request's body answers at once
    first = await run(ex)
    assert first.message.classification.label == "slow" and held.stores == 1
    caller.adapters["slow"].release.clear()
    held.hold = True
    pending = asyncio.ensure_future(run(ex))
    await asyncio.sleep(0.05)  # the body's model call is running
    held.release.set()
    hit = await pending
    caller.adapters["slow"].release.set()
    assert [s.kind for s in hit.trace.spans] == ["cache"] and hit.trace.spans[0].cache_hit


class AlwaysHit(MemoryCache):
    """A shared cache that has every answer, one round trip away."""

    def __init__(self) -> None:
        super().__init__(300.0, 100)

    async def get(self, key: str) -> bytes | None:
        await asyncio.sleep(0.02)
        return pb.Message(classification=pb.Classification(label="cached", confidence=1.0)).SerializeToString()


@pytest.mark.parametrize("nested", [False, True])
async def test_a_discarded_body_that_fell_back_does_not_make_the_answer_degraded(nested: bool) -> None:
    failing = {**model("cls", "Fail", typed=True), "fallback": model("fb", "Label", label="fallback")}
    inner = cache(failing, name="inner")
    if nested:  # the same body under two speculations: the inner hit takes it back from both
        inner = cache(chain(inner, name="mid"), name="middle")
    outer = {"kind": "cache", "name": "outer", "body": chain(inner, model("after", "Tag", suffix="+"), name="body")}
    stores: list[str] = []

    class Counting(MemoryCache):
        async def put(self, key: str, value: bytes) -> None:
            stores.append(key)
            await super().put(key, value)

    def factory(path: str, node: Any) -> MemoryCache:
        return Counting(300.0, 100) if path.endswith("/outer") else AlwaysHit()

    ex, _ = build(graph(outer), cache_factory=factory)
    result = await run(ex)
    assert result.message.classification.label == "cached"
    (span,) = [s for s in spans_of(result.trace, "cache") if s.node.endswith("/outer")]
    assert span.detail == "" and len(stores) == 1  # stored: the answer is not degraded
