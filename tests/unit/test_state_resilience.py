"""State that survives: checkpoint coalescing, near cache, breaker, degraded answers (fakes, no Ray)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from fake_actor import Handle
from fakes import build, graph, model, spans_of, text

from actors.backends import ActorCache, ActorState, StateLink
from actors.checkpoint import CoalescingCheckpoint
from actors.resilience import Breaker, NearCache, RateLimitedLog, near_ttl
from actors.shared_state import GraphState
from modelweave.observe import DictSink
from modelweave.spec import AdaptiveValue, CacheNode

pytestmark = pytest.mark.timeout(10)

VAR = AdaptiveValue(state="thr", initial=0.5, min=0.0, max=1.0)
NODE = CacheNode(name="c", body={"kind": "model", "name": "m", "impl": "x:Y"}, ttl_s=20, max_entries=100)


class Clock:
    """A fake monotonic clock."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class MemoryKV:
    """KVStore in a dict; ``fail`` makes puts raise."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.puts = 0
        self.fail = False

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes) -> None:
        if self.fail:
            raise ConnectionError("gcs down")
        self.puts += 1
        self.data[key] = value


def link_over(target: Any, clock: Clock, sink: DictSink | None = None, **kw: Any) -> tuple[StateLink, Handle]:
    handle = Handle(target)
    return StateLink(handle, "g", sink=sink, timeout_s=0.02, write_timeout_s=0.02, clock=clock, **kw), handle


# -- checkpoint coalescing ----------------------------------------------------------------------


def test_checkpoint_first_change_writes_at_once_then_at_most_once_per_interval():
    clock, kv = Clock(), MemoryKV()
    cp = CoalescingCheckpoint(kv, "k", interval_s=0.5, clock=clock)
    assert cp.changed() == 0.0  # quiet before: write now
    assert cp.flush({"thr": 0.6}) is None
    assert kv.puts == 1
    clock.t += 0.1
    assert cp.changed() == pytest.approx(0.4)  # scheduled for 0.5 s after the last write
    for _ in range(50):  # a hot variable: no more flushes scheduled
        assert cp.changed() is None
    clock.t += 0.4
    cp.flush({"thr": 0.9})
    assert kv.puts == 2
    assert json.loads(kv.data["k"])["values"] == {"thr": 0.9}  # the latest values, once
    assert cp.flush({"thr": 0.9}) is None and kv.puts == 2  # nothing changed: no write


def test_checkpoint_failed_write_stays_dirty_and_asks_for_a_retry():
    clock, kv = Clock(), MemoryKV()
    cp = CoalescingCheckpoint(kv, "k", interval_s=0.5, clock=clock)
    kv.fail = True
    assert cp.changed() == 0.0
    assert cp.flush({"thr": 0.7}) == 0.5
    assert cp.changed() is None  # the retry is already scheduled
    kv.fail = False
    assert cp.flush({"thr": 0.7}) is None
    assert CoalescingCheckpoint(kv, "k").load() == {"thr": 0.7}


def test_checkpoint_load_missing_or_corrupt_is_empty():
    kv = MemoryKV()
    assert CoalescingCheckpoint(kv, "k").load() == {}
    kv.data["k"] = b"not json"
    assert CoalescingCheckpoint(kv, "k").load() == {}


async def test_restarted_actor_restores_feedback_from_checkpoint():
    kv = MemoryKV()
    first = GraphState("feedback/g", store=kv, interval_s=0.01)
    for _ in range(20):
        await first.adjust_state(VAR.model_dump(), 0.01)
    await asyncio.sleep(0.05)  # let the coalesced flush run
    assert 1 <= kv.puts <= 3
    restarted = GraphState("feedback/g", store=kv)  # what Ray does after a SIGKILL
    assert await restarted.get_state(VAR.model_dump()) == pytest.approx(0.7)
    other = GraphState("feedback/other-version", store=kv)
    assert await other.get_state(VAR.model_dump()) == 0.5


async def test_actor_creates_a_missing_cache_from_the_spec_sent_with_each_call():
    actor = GraphState()
    with pytest.raises(KeyError):
        await actor.cache_get("g/c", "k")  # old protocol: unconfigured cache
    assert await actor.cache_get("g/c", "k", (20.0, 100)) is None
    await actor.cache_put("g/c", "k", b"v", (20.0, 100))
    assert await actor.cache_get("g/c", "k", (20.0, 100)) == b"v"
    assert (await actor.stats())["caches"]["g/c"]["size"] == 1


# -- near cache, breaker, bounded log ---------------------------------------------------------


def test_near_cache_ttl_and_bound():
    assert near_ttl(600) == 5.0 and near_ttl(20) == 2.0
    clock = Clock()
    near = NearCache(2.0, 2, clock)
    near.put("a", b"1")
    near.put("b", b"2")
    near.put("c", b"3")
    assert near.get("a") is None and near.get("c") == b"3"  # size bound
    clock.t += 2.1
    assert near.get("c") is None  # expired


def test_breaker_skips_then_lets_one_probe_through():
    clock = Clock()
    breaker = Breaker(1.0, clock)
    assert breaker.allow()
    breaker.failure()
    assert not breaker.allow()
    clock.t += 1.1
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.release()  # probe cancelled
    assert breaker.allow()
    breaker.success()
    assert breaker.allow() and breaker.allow()


def test_rate_limited_log_is_bounded(caplog):
    clock = Clock()
    log = RateLimitedLog(logging.getLogger("t"), 10.0, clock)
    with caplog.at_level(logging.WARNING, logger="t"):
        sent = [log.warning("down %s", i) for i in range(100)]
        clock.t += 10
        log.warning("down again")
    assert sent.count(True) == 1
    assert len(caplog.records) == 2
    assert "99 similar message(s) suppressed" in caplog.records[1].getMessage()


# -- backends over a fake actor ---------------------------------------------------------------


async def test_cache_recovers_after_actor_restart_and_near_cache_saves_round_trips():
    clock = Clock()
    link, handle = link_over(GraphState(), clock)
    cache = ActorCache(link, "g/c", NODE, clock)
    await cache.put("k", b"v")
    await link.drain()
    assert await cache.get("k") == b"v"
    assert "cache_get" not in handle.calls  # served by the near cache
    handle.target = GraphState()  # the actor restarted empty
    clock.t += near_ttl(NODE.ttl_s) + 0.1
    assert await cache.get("k") is None  # a miss, not an error
    await cache.put("k", b"v2")
    await link.drain()
    clock.t += near_ttl(NODE.ttl_s) + 0.1
    assert await cache.get("k") == b"v2"  # from the re-created actor cache
    assert link.errors == {}


async def test_unreachable_actor_gives_misses_and_last_values_counted_and_logged_once(caplog):
    clock, sink = Clock(), DictSink()
    link, handle = link_over(GraphState(), clock, sink)
    cache, state = ActorCache(link, "g/c", NODE, clock), ActorState(link)
    assert await state.adjust(VAR, 0.2) == pytest.approx(0.7)
    await state.drain()
    handle.mode = "hung"
    with caplog.at_level(logging.WARNING, logger="modelweave.state"):
        assert await cache.get("new") is None  # times out
        assert await state.get(VAR) == pytest.approx(0.7)  # skipped by the breaker: last value
        assert await state.adjust(VAR, 0.1) == pytest.approx(0.7)  # delta dropped
        await cache.put("new", b"v")  # returns at once
        await link.drain()
    assert link.errors[("cache_get", "timeout")] == 1
    assert link.errors[("state_get", "unavailable")] == 1
    assert link.errors[("state_adjust", "unavailable")] == 1
    assert sink.counters[("state_errors_total", (("graph", "g"), ("op", "cache_get"), ("reason", "timeout")))] == 1
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is None  # bounded, no stack trace
    handle.mode = "dead"
    clock.t += 1.1
    assert await state.get(VAR) == pytest.approx(0.7)
    assert link.errors[("state_get", "error")] == 1
    handle.mode = "ok"
    clock.t += 1.1
    assert await state.get(VAR) == pytest.approx(0.7)  # the probe answers: back to normal
    assert not link.breaker.tripped


async def test_fire_and_forget_writes_are_bounded_and_their_failures_counted():
    clock = Clock()
    link, handle = link_over(GraphState(), clock, max_pending_writes=1)
    cache = ActorCache(link, "g/c", NODE, clock)
    handle.mode = "hung"
    await cache.put("a", b"1")
    await cache.put("b", b"2")
    assert link.errors[("cache_put", "overflow")] == 1
    await link.drain()
    assert link.errors[("cache_put", "timeout")] == 1
    assert await cache.get("a") == b"1"  # still served by this replica's near cache


async def test_graph_answers_while_the_state_actor_is_down():
    clock = Clock()
    link, handle = link_over(GraphState(), clock)
    threshold = {"state": "thr", "initial": 0.5, "min": 0.0, "max": 1.0}
    flow = {"kind": "chain", "name": "main", "steps": [
        {"kind": "cache", "name": "c", "body": model("cls", "LabelFromText", confidence=0.3)},
        {"kind": "route", "name": "r", "default": "keep",
         "branches": {"keep": None, "esc": model("s", "Tag", suffix="+")},
         "rules": [{"branch": "esc", "when": [{"field": "classification.confidence", "op": "lt",
                                               "value_from": threshold}]}],
         "feedback": [{"state": "thr", "field": "text.content", "on_changed": 0.1}]},
    ]}
    ex, _ = build(graph(flow), cache_factory=lambda p, n: ActorCache(link, p, n, clock), state=ActorState(link),
                  state_refresh_s=0)
    await ex.run(text("one"))
    await ex.run(text("two"))
    await asyncio.gather(link.drain(), ex.state.drain())
    assert await handle.target.get_state(threshold) == pytest.approx(0.7)
    handle.mode = "dead"
    result = await ex.run(text("three"))  # fresh key: a miss; threshold: the last known value
    assert [s.cache_hit for s in spans_of(result.trace, "cache")] == [False]
    assert spans_of(result.trace, "route")[0].detail == "rules[0] (thr=0.700)"  # not the initial 0.5
    assert ("cache_get", "error") in link.errors


# -- feedback adjustments off the request path ---------------------------------------------------


async def test_adjustments_answer_at_once_and_reach_the_actor_in_one_call_in_order():
    clock = Clock()
    actor = GraphState()
    link, handle = link_over(actor, clock)
    state = ActorState(link, flush_delay_s=0.01)
    narrow = AdaptiveValue(state="thr", initial=0.5, min=0.4, max=0.6)
    values = [await state.adjust(narrow, d) for d in (0.05, 0.05, 0.05, -0.3)]
    assert values == pytest.approx([0.55, 0.6, 0.6, 0.4])  # clamped after each delta, as the actor does
    assert "adjust_state_many" not in handle.calls  # nothing waited for the actor
    assert await state.get(narrow) == pytest.approx(0.4)  # own deltas on their way: the copy answers
    assert "get_state" not in handle.calls
    await state.drain()
    assert handle.calls.count("adjust_state_many") == 1
    assert await actor.get_state(narrow.model_dump()) == pytest.approx(0.4)  # same order, same clamps


async def test_the_copy_takes_other_replicas_adjustments_and_replays_its_own_queued_deltas():
    clock = Clock()
    actor = GraphState()
    link, _ = link_over(actor, clock)
    state = ActorState(link, flush_delay_s=0.0)
    await actor.adjust_state(VAR.model_dump(), 0.3)  # another replica moved it: 0.8
    await state.adjust(VAR, 0.1)  # this copy did not know: 0.6 until the actor answers
    await state.drain()
    assert await state.get(VAR) == pytest.approx(0.9)  # the actor's value, both deltas in it
    release = asyncio.Event()
    original = actor.adjust_state_many

    async def slow(var: dict[str, Any], deltas: list[float]) -> list[float]:
        await release.wait()
        return await original(var, deltas)

    actor.adjust_state_many = slow  # type: ignore[method-assign]
    await state.adjust(VAR, -0.2)  # 0.7, sent ...
    await asyncio.sleep(0.01)
    await state.adjust(VAR, -0.1)  # ... 0.6, queued behind it
    await actor.adjust_state(VAR.model_dump(), 0.05)  # another replica: 0.95 on the actor
    release.set()
    await state.drain()
    assert await actor.get_state(VAR.model_dump()) == pytest.approx(0.65)
    assert await state.get(VAR) == pytest.approx(0.65)
    assert link.errors == {}


async def test_an_actor_from_an_older_version_gets_one_call_per_delta():
    class OldActor:
        """A detached actor started by an earlier modelweave: no adjust_state_many."""

        def __init__(self) -> None:
            self.state = GraphState()
            self.calls: list[str] = []

        def __getattr__(self, method: str) -> Any:
            if method == "adjust_state_many":
                raise AttributeError(method)
            self.calls.append(method)
            return Handle(self.state).__getattr__(method)

    old = OldActor()
    state = ActorState(StateLink(old, "g", timeout_s=0.5), flush_delay_s=0.0)
    await state.adjust(VAR, 0.1)
    await state.adjust(VAR, 0.1)
    await state.drain()
    assert old.calls == ["adjust_state", "adjust_state"]
    assert await old.state.get_state(VAR.model_dump()) == pytest.approx(0.7)
    assert await state.get(VAR) == pytest.approx(0.7)


async def test_deltas_the_actor_never_got_are_dropped_from_the_copy_and_counted():
    clock = Clock()
    link, handle = link_over(GraphState(), clock)
    state = ActorState(link, flush_delay_s=0.0)
    assert await state.get(VAR) == pytest.approx(0.5)
    handle.mode = "hung"  # the actor stops answering after the read
    assert await state.adjust(VAR, 0.1) == pytest.approx(0.6)  # the copy moves at once ...
    await state.drain()
    assert link.errors[("state_adjust", "timeout")] == 1
    assert await state.get(VAR) == pytest.approx(0.5)  # ... and forgets the delta (breaker open: no call)
    assert await state.adjust(VAR, 0.1) == pytest.approx(0.5)  # while the actor fails: dropped at once
    assert link.errors[("state_adjust", "unavailable")] == 1


# -- coalesced state calls ----------------------------------------------------------------------


async def test_a_write_rides_on_the_next_read_in_one_round_trip_in_order():
    clock = Clock()
    link, handle = link_over(GraphState(), clock)
    cache, other = ActorCache(link, "g/c", NODE, clock), ActorCache(link, "g/c", NODE, clock)
    await cache.put("k", b"v")  # queued, not sent
    assert handle.round_trips == 0
    assert await other.get("k") == b"v"  # another replica-local cache: the actor has it, put first
    assert handle.round_trips == 1 and handle.calls == ["cache_put", "cache_get"]
    await link.drain()
    assert handle.round_trips == 1 and link.errors == {}


async def test_writes_without_a_read_go_together_after_the_write_delay():
    clock = Clock()
    actor = GraphState()
    link, handle = link_over(actor, clock, write_delay_s=0.01)
    cache, state = ActorCache(link, "g/c", NODE, clock), ActorState(link, flush_delay_s=0.0)
    await cache.put("a", b"1")
    await cache.put("b", b"2")
    await state.adjust(VAR, 0.1)
    await asyncio.sleep(0.05)
    assert handle.round_trips == 1
    assert sorted(handle.calls) == ["adjust_state_many", "cache_put", "cache_put"]
    assert await actor.cache_get("g/c", "b") == b"2"
    assert await state.get(VAR) == pytest.approx(0.6)


async def test_a_cancelled_read_still_delivers_the_writes_it_carries():
    clock = Clock()
    actor = GraphState()
    link, handle = link_over(actor, clock)
    release = asyncio.Event()
    original = actor.apply_batch

    async def slow(ops: list[Any]) -> list[Any]:
        await release.wait()
        return await original(ops)

    actor.apply_batch = slow  # type: ignore[method-assign]
    cache = ActorCache(link, "g/c", NODE, clock)
    await cache.put("k", b"v")
    reader = asyncio.ensure_future(cache.get("other"))
    await asyncio.sleep(0.001)
    reader.cancel()  # the request went away while its lookup (carrying the put) was out
    release.set()
    await link.drain()
    assert await original([("cache_get", ("g/c", "k"))]) == [(True, b"v")]
    assert link.errors == {}


async def test_an_op_that_fails_on_the_actor_fails_alone_and_is_counted():
    clock = Clock()
    link, _ = link_over(GraphState(), clock)
    cache = ActorCache(link, "g/c", NODE, clock)
    await cache.put("k", b"v")
    link.write("cache_put", "cache_put", "g/unknown", "k", b"v", None)  # no spec: the actor raises KeyError
    ok, value = await link.read("cache_get", "cache_get", "g/c", "k", (20, 100))
    assert (ok, value) == (True, b"v")
    assert link.errors == {("cache_put", "error"): 1}
    assert not link.breaker.tripped  # the actor answered


async def test_an_actor_without_apply_batch_gets_one_call_per_op():
    class OldActor:
        def __init__(self) -> None:
            self.handle = Handle(GraphState())

        def __getattr__(self, method: str) -> Any:
            if method == "apply_batch":
                raise AttributeError(method)
            return getattr(self.handle, method)

    old = OldActor()
    link = StateLink(old, "g", timeout_s=0.5)
    cache = ActorCache(link, "g/c", NODE)
    await cache.put("k", b"v")
    await link.drain()
    assert old.handle.calls == ["cache_put"]
    assert not link.batching
    assert await ActorCache(link, "g/c", NODE).get("k") == b"v"
    assert old.handle.calls == ["cache_put", "cache_get"] and old.handle.round_trips == 2



async def test_flush_now_sends_the_queued_writes_at_once():
    clock = Clock()
    actor = GraphState()
    link, handle = link_over(actor, clock, write_delay_s=10.0)
    await ActorCache(link, "g/c", NODE, clock).put("k", b"v")
    link.flush_now()  # what the ingress does when Serve stops it
    assert handle.round_trips == 1 and handle.calls == ["cache_put"]
    await link.drain()
    assert await actor.cache_get("g/c", "k") == b"v"


def test_flush_now_without_an_event_loop_does_nothing():
    link = StateLink(Handle(GraphState()), "g")
    link.flush_now()  # interpreter teardown: no loop, no error


async def test_a_read_that_crosses_an_own_delta_does_not_hide_it():
    clock = Clock()
    actor = GraphState()
    link, _ = link_over(actor, clock)
    state = ActorState(link, flush_delay_s=0.05)
    release = asyncio.Event()
    original = actor.get_state

    async def slow(var: dict[str, Any]) -> float:
        await release.wait()
        return await original(var)

    actor.get_state = slow  # type: ignore[method-assign]
    read = asyncio.ensure_future(state.get(VAR))  # asks the actor: 0.5 ...
    await asyncio.sleep(0.01)
    assert await state.adjust(VAR, 0.1) == pytest.approx(0.6)  # ... while this replica moves it
    release.set()
    assert await read == pytest.approx(0.6)  # the answer predates the delta: the copy answers
    assert await state.get(VAR) == pytest.approx(0.6)
    await state.drain()
    assert await state.get(VAR) == pytest.approx(0.6)
