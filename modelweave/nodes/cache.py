"""``cache``: reuse ``body``'s output for an input seen before (exact key over the parts it reads)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from google.protobuf.message import Message as ProtoMessage
from pydantic import Field

from modelweave.conditions import read_field
from modelweave.errors import GraphSpecError
from modelweave.fields import field_part
from modelweave.messages import copy_parts
from modelweave.nodes.base import DictSlot, NodeKind, TypeRule
from modelweave.spec_base import NodeBase
from modelweave.state import cache_key
from modelweave.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    from modelweave.checker import NodeInfo, Walker
    from modelweave.executor import Executor
    from modelweave.spec import Node
    from modelweave.trace import RequestContext

logger = logging.getLogger("modelweave.executor")


class CacheNode(NodeBase):
    """Caches ``body``'s output keyed by the exact parts it reads."""

    kind: Literal["cache"] = "cache"
    body: Node
    ttl_s: float = Field(300.0, gt=0)
    max_entries: int = Field(10_000, ge=1, le=10_000_000)
    key_fields: list[str] | None = Field(None, description="envelope fields in the key; default: parts read")


class CacheKind(NodeKind):
    """Type rule: the body's; the key must read something (its input parts or ``key_fields``)."""

    kind = "cache"
    spec = CacheNode
    node_fields = ("body",)
    shape = ('[("', '")]')
    colour = "#f3e8ff"

    def children(self, node: CacheNode) -> Iterator[tuple[str, Node]]:
        yield "body", node.body

    def dict_children(self, data: dict[str, Any]) -> Iterator[DictSlot]:
        yield "body", data, "body"

    def ablation(self, data: dict[str, Any]) -> tuple[dict[str, Any] | None, str] | None:
        return data["body"], "no cache"

    def check(self, walker: Walker, node: CacheNode, path: str, available: frozenset[str],
              info: NodeInfo) -> TypeRule:
        out = walker.walk(node.body, path, available, path, "body")
        b = walker.checked.info(node.body)
        if node.key_fields:
            for i, key in enumerate(node.key_fields):
                field_part(key, available, f"{path}: key_fields[{i}]")
        if not node.key_fields and not b.reads:
            raise GraphSpecError(f"{path}: the cached body reads no input parts; set key_fields")
        return out, set(b.writes), set(b.reads)

    async def run(self, ex: Executor, node: CacheNode, msg: pb.Message, ctx: RequestContext, path: str,
                  attempt: int) -> pb.Message:
        start = time.monotonic()
        info = ex.graph.info(node)
        key = cache_key(ex.graph.spec.name, path, _key_payload(msg, node, info.reads))
        backend = ex.caches[path]
        try:
            hit = await backend.get(key)
        except Exception:  # a cache outage degrades to a miss
            logger.warning("cache %s unavailable", path, exc_info=True)
            hit = None
        if hit is not None:
            cached = pb.Message.FromString(hit)
            copy_parts(cached, msg, info.writes)
            ctx.record(pb.Span(node=path, kind="cache", attempt=attempt, start_ms=ctx.elapsed_ms(), cache_hit=True,
                               latency_ms=(time.monotonic() - start) * 1000.0))
            return msg
        degraded_before = ctx.degraded
        out = await ex.run_node(node.body, msg, ctx, path, attempt)
        detail = ""
        if ctx.degraded > degraded_before:
            # A fallback's or an exhausted validation's answer must not outlive the outage
            # that caused it: later requests get a fresh try instead of the degraded answer.
            detail = "not stored: degraded answer (fallback or validation exhausted)"
        else:
            stored = pb.Message()
            copy_parts(out, stored, info.writes)
            try:
                await backend.put(key, stored.SerializeToString(deterministic=True))
            except Exception:
                logger.warning("cache %s store failed", path, exc_info=True)
        ctx.record(pb.Span(node=path, kind="cache", attempt=attempt, start_ms=ctx.elapsed_ms(), cache_hit=False,
                           detail=detail, latency_ms=(time.monotonic() - start) * 1000.0))
        return out


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
