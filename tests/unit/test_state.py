"""In-process cache and feedback state; cache keys."""

from __future__ import annotations

import asyncio

import pytest

from modelweave.spec import AdaptiveValue
from modelweave.state import MemoryCache, MemoryState, cache_key

VAR = AdaptiveValue(state="thr", initial=0.5, min=0.2, max=0.8)


async def test_memory_cache_get_put_and_counts():
    cache = MemoryCache(ttl_s=60, max_entries=10)
    assert await cache.get("k") is None
    await cache.put("k", b"v")
    assert await cache.get("k") == b"v"
    assert cache.get_now("k") == b"v"
    assert (cache.hits, cache.misses) == (2, 1)
    assert len(cache) == 1


async def test_memory_cache_overwrite():
    cache = MemoryCache(ttl_s=60, max_entries=10)
    await cache.put("k", b"1")
    await cache.put("k", b"2")
    assert await cache.get("k") == b"2"
    assert len(cache) == 1


async def test_memory_cache_empty_value_is_a_hit():
    cache = MemoryCache(ttl_s=60, max_entries=10)
    await cache.put("k", b"")
    assert await cache.get("k") == b""
    assert cache.hits == 1 and cache.misses == 0


async def test_memory_cache_ttl():
    cache = MemoryCache(ttl_s=0.05, max_entries=10)
    cache.put_now("k", b"v")
    assert cache.get_now("k") == b"v"
    await asyncio.sleep(0.08)
    assert cache.get_now("k") is None
    assert len(cache) == 0


def test_memory_cache_size_bound_evicts_least_recently_used():
    cache = MemoryCache(ttl_s=60, max_entries=2)
    cache.put_now("a", b"1")
    cache.put_now("b", b"2")
    assert cache.get_now("a") == b"1"  # "a" is now the most recently used
    cache.put_now("c", b"3")
    assert len(cache) == 2
    assert cache.get_now("b") is None
    assert cache.get_now("a") == b"1"
    assert cache.get_now("c") == b"3"


async def test_memory_state_initial_and_adjust():
    state = MemoryState()
    assert await state.get(VAR) == 0.5
    assert await state.adjust(VAR, 0.1) == pytest.approx(0.6)
    assert await state.get(VAR) == pytest.approx(0.6)
    assert state.adjust_now(VAR, -0.15) == pytest.approx(0.45)


async def test_memory_state_clamps_to_bounds():
    state = MemoryState()
    assert await state.adjust(VAR, 10) == 0.8
    assert await state.adjust(VAR, 0.1) == 0.8
    assert await state.adjust(VAR, -0.1) == pytest.approx(0.7)
    assert await state.adjust(VAR, -10) == 0.2
    assert await state.get(VAR) == 0.2


async def test_memory_state_variables_are_independent():
    state = MemoryState()
    other = AdaptiveValue(state="other", initial=1.0, min=0.0, max=2.0)
    await state.adjust(VAR, 0.2)
    assert await state.get(other) == 1.0
    assert state.values == {"thr": pytest.approx(0.7)}


def test_cache_key_is_stable_and_separates_inputs():
    key = cache_key("g", "g/main/c", b"payload")
    assert key == cache_key("g", "g/main/c", b"payload")
    assert len(key) == 64 and int(key, 16) >= 0
    others = {cache_key("h", "g/main/c", b"payload"), cache_key("g", "g/main/d", b"payload"),
              cache_key("g", "g/main/c", b"payloaD"), cache_key("g", "g/main/c", b"")}
    assert key not in others
    assert len(others) == 4
    # the separator keeps the boundaries: ("g", "a/b") differs from ("ga", "/b")
    assert cache_key("g", "a/b", b"") != cache_key("ga", "/b", b"")
