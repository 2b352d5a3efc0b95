"""Semantic cache: the numpy index (threshold, TTL, size, LRU), the guard, the actor client (no Ray)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from fake_actor import Handle

from actors.backends import ActorSemanticCache, StateLink
from actors.shared_state import GraphState
from modelweave.errors import InvalidArgument
from modelweave.semantic_cache import MemorySemanticCache, SemanticIndex
from modelweave.semantic_guard import GuardConfig, SemanticGuard, check

pytestmark = pytest.mark.timeout(20)

PAIRS = (pathlib.Path(__file__).resolve().parents[2]
         / "modelweave/apps/triage/assets/semantic_cache_pairs.jsonl")


class Clock:
    """A fake monotonic clock."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def vec(*head: float, dim: int = 8) -> np.ndarray:
    """A vector with the given leading components (the rest zero)."""
    v = np.zeros(dim, dtype=np.float32)
    v[: len(head)] = head
    return v


def at_cos(c: float) -> np.ndarray:
    """A unit vector with cosine ``c`` to ``vec(1)``."""
    return vec(c, float(np.sqrt(1 - c * c)))


# -- index ------------------------------------------------------------------------------------------


def test_hit_at_or_above_threshold_and_miss_below():
    index = SemanticIndex(0.9, guard=False)
    index.store(vec(1), "a", b"A")
    assert index.lookup(at_cos(0.95), "b") is not None
    hit = index.lookup(at_cos(0.9001), "b")
    assert hit is not None and hit.value == b"A" and hit.text == "a" and hit.score == pytest.approx(0.9001, abs=1e-4)
    assert index.lookup(at_cos(0.85), "b") is None
    assert (index.hits, index.misses) == (2, 1)


def test_lookup_is_cosine_not_dot_product():
    index = SemanticIndex(0.99, guard=False)
    index.store(vec(10.0), "a", b"A")  # not unit length: normalised on the way in
    assert index.lookup(vec(0.001), "b") is not None


def test_best_of_several_entries_wins():
    index = SemanticIndex(0.8, guard=False)
    index.store(at_cos(0.85), "far", b"F")
    index.store(at_cos(0.97), "near", b"N")
    index.store(vec(0, 0, 1), "other", b"O")
    hit = index.lookup(vec(1), "q")
    assert hit is not None and hit.value == b"N"


def test_entries_expire_after_ttl():
    clock = Clock()
    index = SemanticIndex(0.9, ttl_s=10, guard=False, clock=clock)
    index.store(vec(1), "a", b"A")
    clock.t += 9.9
    hit = index.lookup(vec(1), "a")
    assert hit is not None and hit.age_s == pytest.approx(9.9)
    clock.t += 0.2
    assert index.lookup(vec(1), "a") is None


def test_full_index_evicts_expired_first_then_least_recently_used():
    clock = Clock()
    index = SemanticIndex(0.99, ttl_s=10, max_entries=3, guard=False, clock=clock)
    index.store(vec(1), "x", b"X")
    clock.t += 8
    index.store(vec(0, 1), "y", b"Y")
    index.store(vec(0, 0, 1), "z", b"Z")
    clock.t += 3  # x expired
    index.store(vec(0, 0, 0, 1), "w", b"W")  # takes x's slot, not y's
    assert len(index) == 3
    assert index.lookup(vec(0, 1), "y") is not None  # y used: z is now least recently used
    index.store(vec(0, 0, 0, 0, 1), "v", b"V")
    assert index.lookup(vec(0, 0, 1), "z") is None
    assert index.lookup(vec(0, 1), "y") is not None and index.lookup(vec(0, 0, 0, 0, 1), "v") is not None
    assert len(index) == 3


def test_storing_the_same_text_replaces_its_entry():
    index = SemanticIndex(0.9, max_entries=2, guard=False)
    index.store(vec(1), "a", b"old")
    index.store(vec(1), "a", b"new")
    assert len(index) == 1
    hit = index.lookup(vec(1), "a")
    assert hit is not None and hit.value == b"new"


def test_index_grows_past_its_first_block():
    index = SemanticIndex(0.999, max_entries=500, guard=False)
    rng = np.random.default_rng(1)
    data = rng.standard_normal((300, 16)).astype(np.float32)
    for i, v in enumerate(data):
        index.store(v, f"t{i}", str(i).encode())
    hit = index.lookup(data[123], "q")
    assert hit is not None and hit.value == b"123"
    index.clear()
    assert len(index) == 0 and index.lookup(data[123], "q") is None


def test_bad_vectors_and_settings_name_the_field():
    index = SemanticIndex(0.9)
    index.store(vec(1), "a", b"A")
    # A vector that can match nothing is a miss: raised in the shared state actor, it read as
    # an outage and opened the replica's breaker for every state call.
    for odd in (np.ones(3, dtype=np.float32), np.zeros(8), np.full(8, np.nan)):
        assert index.lookup(odd, "q") is None
    with pytest.raises(InvalidArgument, match="embedding"):
        index.store(np.zeros(8), "z", b"Z")
    with pytest.raises(InvalidArgument, match="threshold"):
        SemanticIndex(1.5)


def test_guard_rejection_is_reported_and_a_second_candidate_can_still_hit():
    index = SemanticIndex(0.8)
    index.store(at_cos(0.99), "cancel my order", b"CANCELLED")
    res = index.search(vec(1), "don't cancel my order")
    assert res.hit is None and res.rejected is not None and res.rejected.text == "cancel my order"
    assert res.reason.startswith("negation") and index.guard_rejections == 1
    index.store(at_cos(0.9), "please do not cancel my order", b"KEPT")
    res = index.search(vec(1), "don't cancel my order")
    assert res.hit is not None and res.hit.value == b"KEPT"
    assert res.rejected is not None and res.rejected.text == "cancel my order"


async def test_memory_backend_is_async():
    cache = MemorySemanticCache(SemanticIndex(0.9, guard=False))
    await cache.store(vec(1), "a", b"A")
    res = await cache.lookup(vec(1), "a")
    assert res.hit is not None and res.best_score == pytest.approx(1.0)


# -- guard ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), [
    ("Cancel my order", "Please cancel my order"),
    ("I don't want to cancel my order", "Please do not cancel my order"),
    ("No, I don't want to cancel", "I don't want to cancel"),  # one negation, two words
    ("I forgot my password", "I don't remember my password"),
    ("I was charged twice", "I got charged 2 times"),
    ("I was charged $1,000.00", "They charged me 1000 dollars"),
    ("Where is order #A-1234?", "where is my order a1234"),
    ("I want a new one", "I want a replacement"),
    ("After one week it broke", "It broke after a week"),
    ("Cancel my Order", "cancel my order"),
    ("Is the 64GB model available?", "Do you have the 64 GB model?"),
    ("n'annulez pas ma commande", "ne pas annuler ma commande"),
    ("no quiero nada", "no quiero nada más"),
])
def test_guard_accepts_agreeing_texts(a: str, b: str):
    ok, reason = check(a, b)
    assert ok, reason


@pytest.mark.parametrize(("a", "b", "rule"), [
    ("cancel my order", "don't cancel my order", "negation"),
    ("My package arrived", "My package never arrived", "negation"),
    ("I can log in", "I am unable to log in", "negation"),
    ("annulez ma commande", "n'annulez pas ma commande", "negation"),
    ("Bestellung stornieren", "Bestellung nicht stornieren", "negation"),
    ("quiero cancelar mi pedido", "no quiero cancelar mi pedido", "negation"),
    ("I was charged $50", "I was charged $500", "numbers"),
    ("My order is 2 days late", "My order is 2 weeks late", "numbers"),
    ("Where is order #A1234?", "Where is order #A1243?", "numbers"),
    ("Add one more item", "Add five more items", "numbers"),
    ("I paid 9.99 dollars", "I paid 9.99 euros", "entities"),
    ("Do you ship to Canada?", "Do you ship to Mexico?", "entities"),
    ("My iPhone app crashes", "My Android app crashes", "entities"),
    ("Deliver it on Monday", "Deliver it on friday", "entities"),
    ("I want to cancel my subscription", "I want to keep my subscription", "opposites"),
    ("How do I turn on notifications?", "How do I turn off notifications?", "opposites"),
    ("Please lock my card", "Please unlock my card", "opposites"),
])
def test_guard_rejects_with_an_explainable_reason(a: str, b: str, rule: str):
    ok, reason = check(a, b)
    assert not ok and reason.startswith(rule), reason
    assert not check(b, a).ok  # symmetric


def test_guard_rules_can_be_switched_off():
    guard = SemanticGuard(GuardConfig(antonyms=False))
    assert guard("Please lock my card", "Please unlock my card").ok
    assert not guard("lock my card", "don't lock my card").ok


def test_guard_blocks_every_shipped_negation_opposite_and_entity_pair():
    pairs = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    assert len(pairs) >= 200 and {p["kind"] for p in pairs} >= {"paraphrase", "negation", "number", "entity",
                                                                 "opposite"}
    leaked = [p for p in pairs if p["kind"] in ("negation", "opposite", "entity") and check(p["query"], p["cached"]).ok]
    assert leaked == []
    kept = [p for p in pairs if p["should_hit"] and check(p["query"], p["cached"]).ok]
    assert len(kept) >= 0.9 * sum(p["should_hit"] for p in pairs)


# -- actor client (fake handle, no Ray) --------------------------------------------------------------


async def test_actor_semantic_cache_shares_hits_and_degrades_to_a_miss():
    clock = Clock()
    actor = GraphState()
    handle = Handle(actor)
    link = StateLink(handle, "g", timeout_s=0.02, write_timeout_s=0.05, clock=clock)
    first = ActorSemanticCache(link, "g/c", ttl_s=60, max_entries=100, threshold=0.9, clock=clock)
    other = ActorSemanticCache(StateLink(handle, "g", timeout_s=0.02, clock=clock), "g/c", ttl_s=60,
                               max_entries=100, threshold=0.9, clock=clock)
    await first.store(vec(1), "cancel my order", b"CANCELLED")
    await link.drain()
    res = await other.lookup(at_cos(0.97), "please cancel my order")  # another replica: via the actor
    assert res.hit is not None and res.hit.value == b"CANCELLED"
    res = await other.lookup(at_cos(0.97), "don't cancel my order")
    assert res.hit is None and res.rejected is not None and other.guard_rejections == 1
    assert (await actor.stats())["semantic"]["g/c"]["guard_rejections"] == 1
    handle.mode = "hung"
    res = await other.lookup(at_cos(0.97), "cancel the order please")
    assert res.hit is None
    res = await other.lookup(at_cos(0.97), "please cancel my order")  # near cache: exact text
    assert res.hit is not None
    assert ("semantic_lookup", "timeout") in other._link.errors


def test_threshold_one_hits_exact_repeats():
    index = SemanticIndex(1.0, guard=False)
    rng = np.random.default_rng(7)
    data = rng.standard_normal((200, 384)).astype(np.float32)
    for i, v in enumerate(data):
        index.store(v, f"t{i}", str(i).encode())
    assert all(index.lookup(v, f"t{i}") is not None for i, v in enumerate(data))  # float32 rounding


def test_the_same_text_with_another_vector_is_another_entry():
    index = SemanticIndex(0.99, guard=False)
    index.store(vec(1), "", b"A")
    index.store(vec(0, 1), "", b"B")
    assert len(index) == 2
    assert index.lookup(vec(1), "").value == b"A" and index.lookup(vec(0, 1), "").value == b"B"


async def test_a_bad_vector_is_a_miss_that_does_not_open_the_replicas_breaker():
    clock = Clock()
    actor = GraphState()
    link = StateLink(Handle(actor), "g", timeout_s=0.05, write_timeout_s=0.05, clock=clock)
    cache = ActorSemanticCache(link, "g/c", ttl_s=60, max_entries=100, threshold=0.9, clock=clock)
    await cache.store(vec(1), "cancel my order", b"CANCELLED")
    await link.drain()
    for odd in (np.zeros(8), np.full(8, np.nan), np.ones(3, dtype=np.float32)):  # the last: another size
        assert (await cache.lookup(odd, "cancel my order")).hit is None
    assert not link.breaker.tripped and link.errors == {}
    assert (await cache.lookup(vec(1), "cancel my order")).hit is not None


async def test_the_near_cache_does_not_answer_another_vector_with_the_same_text():
    clock = Clock()
    link = StateLink(Handle(GraphState()), "g", timeout_s=0.05, write_timeout_s=0.05, clock=clock)
    cache = ActorSemanticCache(link, "g/c", ttl_s=60, max_entries=100, threshold=0.9, clock=clock)
    await cache.store(vec(1), "", b"answer for A")  # no text field: "" for every request
    await link.drain()
    assert (await cache.lookup(vec(0, 1), "")).hit is None  # orthogonal: no hit, near cache or actor
    assert (await cache.lookup(vec(1), "")).hit is not None
