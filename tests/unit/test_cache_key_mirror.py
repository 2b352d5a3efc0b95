"""actors/key_index.py: replicas mirror which keys the shared cache holds (fake actor, no Ray)."""

from __future__ import annotations

import hashlib

import pytest
from fake_actor import Handle

from actors.backends import ActorCache, StateLink
from actors.key_index import KeyLog, KeyMirror, key_prefix
from actors.shared_state import GraphState
from modelweave.spec import CacheNode

pytestmark = pytest.mark.timeout(10)

NODE = CacheNode(name="c", body={"kind": "model", "name": "m", "impl": "x:Y"}, ttl_s=60, max_entries=4)


def key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()  # what modelweave.state.cache_key makes


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def replica(handle: Handle, clock: Clock, sync_s: float = 0.25) -> tuple[StateLink, ActorCache]:
    link = StateLink(handle, "g", timeout_s=0.5, write_timeout_s=0.5, clock=clock, write_delay_s=10.0)
    return link, ActorCache(link, "g/c", NODE, clock, key_sync_s=sync_s)


def test_the_log_hands_out_what_was_stored_after_a_pull_and_everything_to_a_new_reader():
    log = KeyLog(max_entries=4)
    for name in ("a", "b", "c"):
        log.add(key(name))
    epoch, seq, prefixes = log.since(None, 0)
    assert seq == 3 and sorted(prefixes) == sorted(key_prefix(key(n)) for n in "abc")
    log.add(key("d"))
    log.add(key("a"))  # stored again: moves to the end
    assert log.since(epoch, seq) == (epoch, 5, [key_prefix(key("a")), key_prefix(key("d"))])
    assert log.since(epoch, 5) == (epoch, 5, [])
    assert len(log.since("an older actor's epoch", 5)[2]) == 4  # a restarted actor: everything again


def test_the_log_keeps_at_most_twice_the_cache_size_newest_first():
    log = KeyLog(max_entries=4)
    for i in range(9):
        log.add(key(str(i)))
    assert len(log) <= 8
    assert key_prefix(key("8")) in log.since(None, 0)[2]
    assert key_prefix(key("0")) not in log.since(None, 0)[2]


def test_the_mirror_answers_only_once_pulled_and_forgets_keys_after_the_ttl():
    clock = Clock()
    mirror = KeyMirror(ttl_s=60, max_entries=4, clock=clock)
    assert not mirror.ready and mirror.may_hold(key("x"))  # not pulled yet: ask the actor
    mirror.apply("e1", 1, [key_prefix(key("a"))])
    assert mirror.may_hold(key("a")) and not mirror.may_hold(key("x"))
    mirror.add(key("x"))  # this replica's own store
    assert mirror.may_hold(key("x"))
    clock.t += 61
    assert not mirror.may_hold(key("a"))
    mirror.add(key("y"))
    mirror.apply("e2", 1, [key_prefix(key("b"))])  # a new actor: only what it holds
    assert mirror.may_hold(key("b")) and not mirror.may_hold(key("y")) and mirror.epoch == "e2"
    first = KeyMirror(ttl_s=60, max_entries=4, clock=clock)
    first.add(key("z"))  # stored while the first pull was on its way: kept
    first.apply("e1", 0, [])
    assert first.may_hold(key("z"))


async def test_a_key_nobody_stored_is_a_miss_without_a_round_trip_once_the_keys_are_pulled():
    clock = Clock()
    handle = Handle(GraphState())
    link, cache = replica(handle, clock)
    assert await cache.get(key("new")) is None  # first lookup: not pulled yet, asks the actor
    await cache.keys_pulled()  # the pull it started
    assert cache.mirror is not None and cache.mirror.ready
    trips = handle.round_trips
    for name in ("n1", "n2", "n3"):
        assert await cache.get(key(name)) is None
    assert handle.round_trips == trips and cache.local_misses == 3
    assert link.errors == {}


async def test_another_replicas_store_becomes_a_hit_after_its_write_and_the_next_pull():
    clock = Clock()
    actor = GraphState()
    link_a, a = replica(Handle(actor), clock)
    link_b, b = replica(Handle(actor), clock)
    await b.get(key("warm"))  # b pulls once: its mirror is ready (and empty)
    await b.keys_pulled()
    await a.put(key("q"), b"answer")
    assert await b.get(key("q")) is None  # not sent yet, not pulled yet: a miss, no round trip
    await link_a.drain()  # a's write reaches the actor
    assert await b.get(key("q")) is None  # still before b's next pull
    clock.t += 0.3
    assert await b.get(key("q")) is None  # this lookup starts the pull ...
    await b.keys_pulled()
    assert await b.get(key("q")) == b"answer"  # ... and the next one asks the actor, a hit
    assert link_a.errors == {} and link_b.errors == {}


async def test_own_stores_stay_known_after_the_near_cache_forgets_them_and_a_restart_resyncs():
    clock = Clock()
    handle = Handle(GraphState())
    link, cache = replica(handle, clock)
    await cache.get(key("warm"))
    await cache.keys_pulled()
    await cache.put(key("mine"), b"v")
    await link.drain()
    clock.t += 10  # past the near cache's TTL (min(5 s, ttl / 10))
    assert cache.near.get(key("mine")) is None
    assert await cache.get(key("mine")) == b"v"  # the mirror knew it: asked the actor
    await cache.keys_pulled()  # the pull that lookup started (same actor, nothing new)
    handle.target = GraphState()  # the actor restarted empty: a new log epoch
    clock.t += 10
    assert await cache.get(key("mine")) is None  # the mirror still says maybe; the actor misses
    await cache.keys_pulled()  # that lookup started a pull: new epoch, full resync
    assert cache.mirror is not None and not cache.mirror.may_hold(key("mine"))
    assert link.errors == {}


async def test_without_key_sync_every_miss_asks_the_actor_as_before():
    clock = Clock()
    handle = Handle(GraphState())
    link = StateLink(handle, "g", timeout_s=0.5, write_timeout_s=0.5, clock=clock)
    cache = ActorCache(link, "g/c", NODE, clock)
    for name in ("n1", "n2"):
        assert await cache.get(key(name)) is None
    assert handle.calls == ["cache_get", "cache_get"] and cache.mirror is None


async def test_an_actor_that_cannot_answer_pulls_leaves_lookups_going_to_it():
    clock = Clock()
    handle = Handle(GraphState())
    link, cache = replica(handle, clock)
    handle.mode = "dead"
    assert await cache.get(key("a")) is None
    await cache.keys_pulled()
    assert cache.mirror is not None and not cache.mirror.ready  # never pulled: no local misses
    assert cache.local_misses == 0


async def test_an_actor_from_an_older_version_without_pulls_gets_every_lookup_as_before():
    class OldActorHandle:
        """A Ray actor handle exposes only the methods its class had."""

        def __init__(self) -> None:
            self.apply_batch = Handle(GraphState()).apply_batch

    link = StateLink(OldActorHandle(), "g", timeout_s=0.5, write_timeout_s=0.5)
    cache = ActorCache(link, "g/c", NODE, key_sync_s=0.25)
    assert cache.mirror is None
    assert await cache.get(key("a")) is None and link.errors == {}
