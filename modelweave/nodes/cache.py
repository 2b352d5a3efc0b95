"""``cache``: reuse ``body``'s output for an input seen before.

``key: exact`` (default) hashes exactly the parts the body reads (or ``key_fields``).
``key: semantic`` compares an embedding of the input with earlier ones (cosine >=
``threshold``) and, unlike GPTCache-style caches, asks a guard whether the two texts
agree on negation, numbers, named entities and opposite intents before serving a
near-hit (:mod:`modelweave.semantic_guard`): "cancel my order" and "don't cancel my
order" embed at 0.95, above true paraphrases, so no threshold alone separates them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from google.protobuf.message import Message as ProtoMessage
from pydantic import Field, model_validator

from modelweave import speculation
from modelweave.conditions import read_field
from modelweave.errors import GraphSpecError, ModelweaveError
from modelweave.fields import field_part
from modelweave.messages import clone, copy_parts, full_name
from modelweave.nodes.base import DictSlot, NodeKind, TypeRule
from modelweave.nodes.model import ModelNode
from modelweave.spec_base import NodeBase
from modelweave.state import cache_key
from modelweave.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    from modelweave.checker import CheckedGraph, NodeInfo, Walker
    from modelweave.draw_graph import DrawingBuilder, Pending
    from modelweave.executor import Executor
    from modelweave.spec import Node
    from modelweave.trace import RequestContext

logger = logging.getLogger("modelweave.executor")


#: Fields that only mean something with ``key: semantic``.
_SEMANTIC_FIELDS = ("embed", "threshold", "guard", "scope")


class CacheNode(NodeBase):
    """Caches ``body``'s output keyed by the exact parts it reads, or by embedding similarity."""

    kind: Literal["cache"] = "cache"
    body: Node
    ttl_s: float = Field(300.0, gt=0)
    max_entries: int = Field(10_000, ge=1, le=10_000_000)
    key_fields: list[str] | None = Field(None, description="envelope fields in the key; default: parts read")
    key: Literal["exact", "semantic"] = Field("exact", description="exact hash, or embedding similarity")
    embed: ModelNode | None = Field(
        None, description="semantic: model run first to produce the envelope's Embedding; without it the "
                          "Embedding must already be there (produced by an earlier node)")
    text: str = Field("text.content", description="semantic: text the guard compares")
    threshold: float = Field(0.85, gt=0, le=1, description="semantic: minimum cosine similarity of a hit")
    guard: bool = Field(True, description="semantic: refuse near-hits whose texts disagree on negation, "
                                          "numbers, entities or intent")
    scope: Literal["shared", "replica"] = Field(
        "shared", description="semantic: one index shared by all ingress replicas (state actor; one scan per "
                              "lookup) or one per replica (scales with replicas, lower hit rate)")
    speculate: bool = Field(
        False, description="exact: start the body together with the lookup instead of after it, so a miss "
                           "does not wait for the lookup's round trip; a hit cancels the body and discards its "
                           "side effects (feedback adjustments, cache stores, shadow outcomes). For a cheap body "
                           "behind a remote cache: a hit still costs the body's work until it is cancelled")

    @model_validator(mode="after")
    def _key_fields_match_key(self) -> CacheNode:
        if self.key == "semantic" and self.key_fields:
            raise ValueError("key_fields is for key: exact; a semantic key is the embedding")
        if self.key == "exact":
            # Non-default values, not fields set: specs also travel as data with defaults filled in.
            fields = type(self).model_fields
            given = sorted(f for f in (*_SEMANTIC_FIELDS, "text") if getattr(self, f) != fields[f].default)
            if given:
                raise ValueError(f"{', '.join(given)} only apply with key: semantic")
        elif self.speculate:
            # The semantic key is an embedding computed first; a lookup that scans an index is
            # not the round trip this saves, and the guard's verdict needs the lookup anyway.
            raise ValueError("speculate applies to key: exact only")
        return self


class CacheKind(NodeKind):
    """Type rule: the body's; the key must read something (its input parts or ``key_fields``)."""

    kind = "cache"
    spec = CacheNode
    node_fields = ("body",)
    shape = ('[("', '")]')
    colour = ("#f3e8ff", "#7e22ce")

    def children(self, node: CacheNode) -> Iterator[tuple[str, Node]]:
        if node.embed is not None:
            yield "embed", node.embed
        yield "body", node.body

    def dict_children(self, data: dict[str, Any]) -> Iterator[DictSlot]:
        if data.get("embed"):
            yield "embed", data, "embed"
        yield "body", data, "body"

    def ablation(self, data: dict[str, Any]) -> tuple[dict[str, Any] | None, str] | None:
        return data["body"], "no cache"

    def check(self, walker: Walker, node: CacheNode, path: str, available: frozenset[str],
              info: NodeInfo) -> TypeRule:
        if node.key == "semantic":
            return self._check_semantic(walker, node, path, available)
        out = walker.walk(node.body, path, available, path, "body")
        b = walker.checked.info(node.body)
        if node.key_fields:
            for i, key in enumerate(node.key_fields):
                field_part(key, available, f"{path}: key_fields[{i}]")
        if not node.key_fields and not b.reads:
            raise GraphSpecError(f"{path}: the cached body reads no input parts; set key_fields")
        return out, set(b.writes), set(b.reads)

    def _check_semantic(self, walker: Walker, node: CacheNode, path: str, available: frozenset[str]) -> TypeRule:
        writes: set[str] = set()
        reads: set[str] = set()
        keyed = available
        if node.embed is not None:
            keyed = walker.walk(node.embed, path, available, path, "embed")
            e = walker.checked.info(node.embed)
            writes |= e.writes
            reads |= e.reads
        if "Embedding" not in keyed:
            raise GraphSpecError(f"{path}: key: semantic compares the envelope's {full_name('Embedding')}, which "
                                 "is not available here: produce it earlier or name a model in 'embed'")
        text_part, _ = field_part(node.text, keyed, f"{path}: text")
        reads |= ({"Embedding"} | ({text_part} if text_part else set())) - (keyed - available)
        out = walker.walk(node.body, path, keyed, path, "body")
        b = walker.checked.info(node.body)
        return out, writes | set(b.writes), reads | (set(b.reads) - (keyed - available))

    def draw_lines(self, node: CacheNode, info: NodeInfo, graph: CheckedGraph) -> list[str]:
        how = f"semantic cache >= {node.threshold:g}" + (" + guard" if node.guard else "") if node.key == "semantic" \
            else "cache"
        return [node.name, f"{how}, ttl {node.ttl_s:g} s"]

    def draw(self, builder: DrawingBuilder, node: CacheNode, path: str, info: NodeInfo, pending: list[Pending],
             entry: str | None) -> tuple[str, list[Pending]]:
        from modelweave.draw_graph import Pending

        assert entry is not None
        source, available = entry, info.available_in
        if node.embed is not None:  # the key is computed before the lookup, hit or miss
            _, e_exits = builder.enter(node.embed, f"{path}/{node.embed.name}", [
                Pending(entry, available, role="key", share=builder.share(path))])
            source, available = e_exits[0].source, e_exits[0].types
        b_path = f"{path}/{node.body.name}"
        before = set(builder.drawing.nodes)
        b_share = builder.share(b_path)
        _, exits = builder.enter(node.body, b_path, [Pending(source, available, role="miss", share=b_share)])
        builder.drawing.groups[entry] = [n for n in builder.drawing.nodes if n not in before]
        share = builder.share(path)
        hit = None if share is None else max(0.0, share - (b_share or 0.0))
        return entry, [*exits, Pending(source, info.available_out, "hit", "hit", hit)]

    async def run(self, ex: Executor, node: CacheNode, msg: pb.Message, ctx: RequestContext, path: str,
                  attempt: int) -> pb.Message:
        if node.key == "semantic":
            return await _run_semantic(ex, node, msg, ctx, path, attempt)
        start = time.monotonic()
        info = ex.graph.info(node)
        key = cache_key(ex.graph.spec.name, path, _key_payload(msg, node, info.reads))
        if node.speculate:
            return await _run_speculative(ex, node, msg, ctx, path, attempt, key, start)
        degraded_before = ctx.degraded
        hit = await _lookup(ex.caches[path].get(key), path)
        if hit is not None:
            return _answer_hit(msg, hit, info.writes, ctx, path, attempt, start)
        try:
            out = await ex.run_node(node.body, msg, ctx, path, attempt)
        except ModelweaveError as exc:
            record_failed_miss(ctx, path, attempt, start, exc)
            raise
        detail = await _store(ex, out, info.writes, ctx, path, key, degraded_before)
        ctx.record(pb.Span(node=path, kind="cache", attempt=attempt, start_ms=ctx.offset_ms(start), cache_hit=False,
                           detail=detail, latency_ms=(time.monotonic() - start) * 1000.0))
        return out


def record_failed_miss(ctx: RequestContext, path: str, attempt: int, start: float, error: BaseException) -> None:
    """The node's span when its body failed on a miss (a typed error ends the node; nothing stored)."""
    if isinstance(error, ModelweaveError):
        ctx.record(pb.Span(node=path, kind="cache", attempt=attempt, start_ms=ctx.offset_ms(start), cache_hit=False,
                           error=error.status.value, detail="not stored: the body failed",
                           latency_ms=(time.monotonic() - start) * 1000.0))


async def _lookup(get: Awaitable[bytes | None], path: str) -> bytes | None:
    try:
        return await get
    except Exception:  # a cache outage degrades to a miss
        logger.warning("cache %s unavailable", path, exc_info=True)
        return None


def _answer_hit(msg: pb.Message, hit: bytes | pb.Message, writes: frozenset[str], ctx: RequestContext, path: str,
                attempt: int, start: float, detail: str = "") -> pb.Message:
    copy_parts(hit if isinstance(hit, pb.Message) else pb.Message.FromString(hit), msg, writes)
    ctx.record(pb.Span(node=path, kind="cache", attempt=attempt, start_ms=ctx.offset_ms(start), cache_hit=True,
                       detail=detail, latency_ms=(time.monotonic() - start) * 1000.0))
    return msg


async def _store(ex: Executor, out: pb.Message, writes: frozenset[str], ctx: RequestContext, path: str, key: str,
                 degraded_before: int) -> str:
    """Stores the body's answer unless it is degraded; returns the span's detail."""
    if ctx.degraded > degraded_before:
        # A fallback's or an exhausted validation's answer must not outlive the outage
        # that caused it: later requests get a fresh try instead of the degraded answer.
        return "not stored: degraded answer (fallback or validation exhausted)"
    if not await speculation.committed():  # inside an enclosing speculation that hit
        return "not stored: an enclosing cache answered"
    stored = pb.Message()
    copy_parts(out, stored, writes)
    try:
        await ex.caches[path].put(key, stored.SerializeToString(deterministic=True))
    except Exception:
        logger.warning("cache %s store failed", path, exc_info=True)
    return ""


async def _run_speculative(ex: Executor, node: CacheNode, msg: pb.Message, ctx: RequestContext, path: str,
                           attempt: int, key: str, start: float) -> pb.Message:
    """The body starts with the lookup; a hit cancels it, a miss lets its side effects through."""
    degraded_before = ctx.degraded
    writes = ex.graph.info(node).writes
    # On its own copy: a hit answers on ``msg`` while the body may still be writing.
    gate, body, body_degraded = speculation.start(ex.run_node(node.body, clone(msg), ctx, path, attempt))
    try:
        # Awaited here, not in a task: the lookup's call goes out in this step, before the
        # body's first step runs.
        hit = await _lookup(ex.caches[path].get(key), path)
        if hit is not None:
            gate.set_result(False)
            body.cancel()
            # What the discarded body degraded is not this request's: an enclosing cache may store.
            ctx.degraded -= speculation.take_back_degraded(body_degraded)
            return _answer_hit(msg, hit, writes, ctx, path, attempt, start, "speculative body cancelled")
        gate.set_result(True)
        try:
            out = await body
        except ModelweaveError as exc:
            record_failed_miss(ctx, path, attempt, start, exc)
            raise
    finally:
        if not gate.done():  # this request was cancelled (deadline, client gone)
            gate.cancel()
        if not body.done():
            body.cancel()
        # A body that failed after a hit: its error is not this request's; retrieve it quietly.
        body.add_done_callback(_quiet)
    detail = await _store(ex, out, writes, ctx, path, key, degraded_before)
    ctx.record(pb.Span(node=path, kind="cache", attempt=attempt, start_ms=ctx.offset_ms(start), cache_hit=False,
                       detail=detail or "speculative: body started with the lookup",
                       latency_ms=(time.monotonic() - start) * 1000.0))
    return out


def _quiet(task: asyncio.Future[pb.Message]) -> None:
    if not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()


async def _run_semantic(ex: Executor, node: CacheNode, msg: pb.Message, ctx: RequestContext, path: str,
                        attempt: int) -> pb.Message:
    start = time.monotonic()  # the span covers the key's embedding too, a child of this node
    if node.embed is not None:
        msg = await ex.run_node(node.embed, msg, ctx, path, attempt)
    vector = list(msg.embedding.values)
    text = str(read_field(msg, node.text) or "")
    answer_parts = ex.graph.info(node.body).writes  # not the embedding: this request's own stays
    backend = ex.semantic_caches[path]
    found = None
    if vector:
        try:
            found = await backend.lookup(vector, text)
        except Exception:  # a cache outage (or an odd vector) degrades to a miss
            logger.warning("semantic cache %s unavailable", path, exc_info=True)
    if found is not None and found.hit is not None:
        copy_parts(pb.Message.FromString(found.hit.value), msg, answer_parts)
        # Never the cached text in the trace: it is another client's input.
        ctx.record(pb.Span(node=path, kind="cache", attempt=attempt, start_ms=ctx.offset_ms(start), cache_hit=True,
                           detail=f"semantic hit: similarity {found.hit.score:.3f}, age {found.hit.age_s:.0f} s",
                           latency_ms=(time.monotonic() - start) * 1000.0))
        return msg
    detail = "" if vector else "no embedding: not looked up or stored"
    if found is not None and found.rejected is not None:
        rule = found.reason.split(":", 1)[0]
        detail = f"{GUARD_REJECTED} ({rule}, similarity {found.rejected.score:.3f})"
    degraded_before = ctx.degraded
    try:
        out = await ex.run_node(node.body, msg, ctx, path, attempt)
    except ModelweaveError as exc:
        record_failed_miss(ctx, path, attempt, start, exc)
        raise
    if ctx.degraded > degraded_before:
        detail = "not stored: degraded answer (fallback or validation exhausted)"
    elif vector and not await speculation.committed():
        detail = "not stored: an enclosing cache answered"
    elif vector:
        stored = pb.Message()
        copy_parts(out, stored, answer_parts)
        try:
            await backend.store(vector, text, stored.SerializeToString(deterministic=True))
        except Exception:
            logger.warning("semantic cache %s store failed", path, exc_info=True)
    ctx.record(pb.Span(node=path, kind="cache", attempt=attempt, start_ms=ctx.offset_ms(start), cache_hit=False,
                       detail=detail, latency_ms=(time.monotonic() - start) * 1000.0))
    return out


#: Span detail prefix of a semantic miss whose best near-hit the guard refused (counted apart in metrics).
GUARD_REJECTED = "near-hit rejected by guard"


def _key_payload(msg: pb.Message, node: CacheNode, reads: frozenset[str]) -> bytes:
    """Deterministic bytes of exactly what the cached body reads (or ``key_fields``)."""
    if node.key_fields:
        parts = []
        for field in node.key_fields:
            value = read_field(msg, field)
            parts.append(value.SerializeToString(deterministic=True) if isinstance(value, ProtoMessage)
                         else repr(value).encode())
        return b"\0".join(parts)
    keyed = pb.Message()
    copy_parts(msg, keyed, sorted(reads))
    return keyed.SerializeToString(deterministic=True)
