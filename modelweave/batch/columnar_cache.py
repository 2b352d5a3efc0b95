"""How a cache node runs columnar: one lookup per distinct key, the first row of a key computes.

Part of :class:`modelweave.batch.columnar.ColumnarRunner` (its cache node), kept apart because
it is the one kind whose columnar form adds a rule: rows of one batch that share a key wait for
the first one's answer and count as hits, as the stage's single-flight cache makes them row by
row. When that answer is not stored (degraded, or the row failed), the others run the body
themselves, together. Lookups, stores and the spans are the cache node's own functions.
"""

from __future__ import annotations

import asyncio
import time

from modelweave.executor import Executor
from modelweave.messages import copy_parts
from modelweave.nodes.cache import _answer_hit, _key_payload, _lookup, _store, record_failed_miss
from modelweave.spec import CacheNode, Node
from modelweave.state import cache_key
from modelweave.trace import RequestContext
from modelweave.v1 import messages_pb2 as pb

#: Rows in flight through one node: (row index, envelope).
Rows = list[tuple[int, pb.Message]]
#: Rows that failed in a node: (row index, the typed error).
Failures = list[tuple[int, BaseException]]


class CacheColumns:
    """The cache node of a columnar run (a base of :class:`~modelweave.batch.columnar.ColumnarRunner`)."""

    ex: Executor
    _ctx: list[RequestContext]

    async def node(self, node: Node, rows: Rows, parent: str, attempt: int) -> tuple[Rows, Failures]:
        """Runs one node on ``rows`` (the runner's dispatch)."""
        raise NotImplementedError

    async def _cache(self, node: CacheNode, rows: Rows, path: str, attempt: int) -> tuple[Rows, Failures]:
        ex = self.ex
        start = time.monotonic()
        info = ex.graph.info(node)
        backend = ex.caches[path]
        groups: dict[str, Rows] = {}
        key_of: dict[int, str] = {}
        for i, msg in rows:
            key = key_of[i] = cache_key(ex.graph.spec.name, path, _key_payload(msg, node, info.reads))
            groups.setdefault(key, []).append((i, msg))
        keys = list(groups)
        hits = await asyncio.gather(*(_lookup(backend.get(k), path) for k in keys))
        done: Rows = []
        leaders: Rows = []
        for key, hit in zip(keys, hits, strict=True):
            if hit is not None:
                cached = pb.Message.FromString(hit)  # once for every row with this key
                done += [(i, _answer_hit(msg, cached, info.writes, self._ctx[i], path, attempt, start))
                         for i, msg in groups[key]]
            else:
                leaders.append(groups[key][0])
        failed: Failures = []
        answered: dict[str, pb.Message] = {}
        rest: Rows = []
        outs, lost = await self._cache_body(node, leaders, path, attempt, key_of, start, answered)
        done += outs
        failed += lost
        for leader, _ in leaders:
            key = key_of[leader]
            followers = groups[key][1:]
            value = answered.get(key)
            if value is None:
                rest += followers  # the first row's answer was not stored: each computes its own
            else:
                done += [(i, _answer_hit(msg, value, info.writes, self._ctx[i], path, attempt, start))
                         for i, msg in followers]
        if rest:
            outs, lost = await self._cache_body(node, rest, path, attempt, key_of, start, {})
            done += outs
            failed += lost
        return done, failed

    async def _cache_body(self, node: CacheNode, rows: Rows, path: str, attempt: int, keys: dict[int, str],
                          start: float, answered: dict[str, pb.Message]) -> tuple[Rows, Failures]:
        """Runs a cache's body on missed rows and stores their answers (``answered``: the stored ones)."""
        ex = self.ex
        writes = ex.graph.info(node).writes
        degraded_before = {i: self._ctx[i].degraded for i, _ in rows}
        outs, lost = await self.node(node.body, rows, path, attempt)
        for i, exc in lost:
            record_failed_miss(self._ctx[i], path, attempt, start, exc)
        for i, out in outs:
            ctx = self._ctx[i]
            detail = await _store(ex, out, writes, ctx, path, keys[i], degraded_before[i])
            if not detail:  # stored: the rows waiting for this key answer from it
                stored = answered[keys[i]] = pb.Message()
                copy_parts(out, stored, writes)
            ctx.record(pb.Span(node=path, kind="cache", attempt=attempt, start_ms=ctx.offset_ms(start), cache_hit=False,
                               detail=detail, latency_ms=(time.monotonic() - start) * 1000.0))
        return outs, lost
