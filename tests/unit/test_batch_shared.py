"""The graph stage's state backends: stage-local cache copy and per-batch feedback mirror (no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from modelweave.batch.shared import BatchedCache, BatchedState, JobState, SharedStateClient
from modelweave.spec import AdaptiveValue, CacheNode
from tests.unit.fake_actor import Handle

VAR = AdaptiveValue(state="threshold", initial=0.5, min=0.4, max=0.6)


def _client() -> tuple[Handle, SharedStateClient]:
    actor = Handle(JobState())
    return actor, SharedStateClient(actor, max_wait_s=0.0)


def test_feedback_is_read_once_per_batch_adjusted_locally_and_sent_in_order_at_the_end() -> None:
    actor, client = _client()
    state = BatchedState(client)

    async def batch(deltas: list[float]) -> list[float]:
        state.begin()
        seen = list(await asyncio.gather(*(state.adjust(VAR, d) for d in deltas)))
        seen.append(await state.get(VAR))
        await state.drain()
        return seen

    seen = asyncio.run(batch([0.05, 0.05, 0.05, -0.02]))
    # Clamped after each delta, as the actor does: 0.55, 0.6 (cap), 0.6, 0.58.
    assert [round(v, 6) for v in seen] == [0.55, 0.6, 0.6, 0.58, 0.58]
    assert actor.calls.count("get_state") == 1 and actor.calls.count("adjust_state_many") == 1
    assert round(JobState.get_state(actor.target, VAR.model_dump()), 6) == 0.58  # the actor agrees

    # Another stage moved the shared value between batches: the next batch reads it again.
    actor.target.adjust_state(VAR.model_dump(), -0.1)
    assert asyncio.run(batch([])) == [actor.target.get_state(VAR.model_dump())]
    assert actor.calls.count("get_state") == 2


def test_a_failed_read_is_retried_by_the_next_row() -> None:
    actor, client = _client()
    state = BatchedState(client)

    async def run() -> float:
        state.begin()
        actor.mode = "dead"
        try:
            await state.get(VAR)
        except RuntimeError:
            pass
        actor.mode = "ok"
        return await state.get(VAR)

    assert asyncio.run(run()) == 0.5


def test_cache_hits_its_local_copy_and_stores_reach_the_actor_when_drained() -> None:
    actor, client = _client()
    node = CacheNode(kind="cache", name="c", ttl_s=60, max_entries=100, body={"kind": "model", "name": "m",
                                                                             "impl": "x:Y"})
    cache = BatchedCache(client, "g/c", node)

    async def run() -> tuple[bytes | None, bytes | None]:
        miss = await cache.get("k")
        await cache.put("k", b"v")
        hit = await cache.get("k")
        await cache.drain()
        return miss, hit

    assert asyncio.run(run()) == (None, b"v")
    assert actor.calls.count("cache_get_many") == 1  # the second lookup never left the stage
    assert actor.target.cache_get("g/c", "k") == b"v"  # the store reached the shared cache


def test_a_batch_s_stores_reach_the_actor_in_one_call_and_its_variables_are_read_before_its_rows() -> None:
    actor, client = _client()
    node = CacheNode(kind="cache", name="c", ttl_s=60, max_entries=100, body={"kind": "model", "name": "m",
                                                                             "impl": "x:Y"})
    cache, state = BatchedCache(client, "g/c", node), BatchedState(client)

    async def run() -> list[float]:
        state.begin()
        await state.prefetch([VAR])
        calls_before_rows = actor.calls.count("get_state")
        for i in range(3):
            await cache.put(f"k{i}", b"v%d" % i)
        assert "cache_put_many" not in actor.calls  # nothing left the stage before the batch ends
        seen = list(await asyncio.gather(*(state.adjust(VAR, 0.01) for _ in range(4))))
        assert actor.calls.count("get_state") == calls_before_rows == 1  # the rows found it read
        await asyncio.gather(cache.drain(), state.drain())
        return seen

    assert [round(v, 6) for v in asyncio.run(run())] == [0.51, 0.52, 0.53, 0.54]
    assert actor.calls.count("cache_put_many") == 1
    assert [actor.target.cache_get("g/c", f"k{i}") for i in range(3)] == [b"v0", b"v1", b"v2"]


def test_steady_state_starts_when_every_stage_has_finished_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    import modelweave.batch.shared as shared

    clock = iter([10.0, 11.0, 12.0, 14.0, 16.0])
    monkeypatch.setattr(shared.time, "time", lambda: next(clock))
    state = JobState()
    batch = {"failures": 0, "cache_hits": 0, "routes": {}, "errors": {}}
    state.record({**batch, "stage": "a", "rows": 100})  # t=10: stage a's first batch
    state.record({**batch, "stage": "a", "rows": 100})  # t=11: a again, while b still loads
    state.record({**batch, "stage": "b", "rows": 100})  # t=12: b's first batch: steady starts here
    assert state.counters()["steady_rows_per_s"] is None
    state.record({**batch, "stage": "a", "rows": 100})  # t=14
    state.record({**batch, "stage": "b", "rows": 100})  # t=16
    counters = state.counters()
    assert counters["rows"] == 500
    assert counters["steady_rows_per_s"] == 200 / 4.0  # not 400 rows over 6 s from a's first batch
