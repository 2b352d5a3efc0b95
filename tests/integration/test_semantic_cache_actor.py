"""The shared semantic cache on a real Ray actor: two replicas' clients, guard, threaded scans."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def unit(seed: int, dim: int = 384) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def near(v: np.ndarray, cos: float, seed: int = 99) -> np.ndarray:
    """A unit vector with cosine ``cos`` to unit vector ``v``."""
    r = unit(seed, v.size)
    r -= float(r @ v) * v
    r /= np.linalg.norm(r)
    return (cos * v + np.sqrt(1 - cos * cos) * r).astype(np.float32)


def test_semantic_cache_through_the_state_actor(ray_cluster: Any) -> None:
    import ray

    from actors.backends import ActorSemanticCache, StateLink
    from actors.shared_state import SEMANTIC_THREAD_MIN_ENTRIES, GraphState

    actor = ray.remote(GraphState).options(max_concurrency=64, num_cpus=0).remote()  # type: ignore[attr-defined]
    try:
        ray.get(actor.stats.remote())  # started and warm

        async def scenario() -> None:
            kw: dict[str, Any] = {"ttl_s": 60.0, "max_entries": 10_000, "threshold": 0.9}
            # Generous timeouts: a cold actor on a busy 2-core host; the resilience paths have unit tests.
            link_a, link_b = (StateLink(actor, "g", timeout_s=10.0, write_timeout_s=10.0) for _ in range(2))
            replica_a = ActorSemanticCache(link_a, "g/c", **kw)
            replica_b = ActorSemanticCache(link_b, "g/c", **kw)
            base = unit(0)
            await replica_a.store(base, "cancel my order", b"CANCELLED")
            await link_a.drain()
            res = await replica_b.lookup(near(base, 0.95), "please cancel my order")
            assert res.hit is not None and res.hit.value == b"CANCELLED" and res.hit.text == "cancel my order"
            res = await replica_b.lookup(near(base, 0.97), "don't cancel my order")
            assert res.hit is None and res.rejected is not None and res.reason.startswith("negation")
            assert replica_b.guard_rejections == 1
            # Past the thread threshold the scan runs in a worker thread; answers stay the same.
            rows = np.random.default_rng(1).standard_normal((SEMANTIC_THREAD_MIN_ENTRIES, 384)).astype(np.float32)
            for start in range(0, len(rows), 512):
                ray.get([actor.semantic_store.remote("g/c", rows[i], f"t{i}", b"v", (60.0, 10_000, 0.9, True))
                         for i in range(start, min(len(rows), start + 512))])
            res = await replica_b.lookup(near(base, 0.95, seed=5), "cancel my order now")
            assert res.hit is not None and res.hit.value == b"CANCELLED"
            assert not link_a.errors and not link_b.errors

        asyncio.run(scenario())
        stats = ray.get(actor.stats.remote())["semantic"]["g/c"]
        assert stats["size"] == SEMANTIC_THREAD_MIN_ENTRIES + 1
        assert stats["hits"] == 2 and stats["guard_rejections"] == 1
    finally:
        ray.kill(actor)
