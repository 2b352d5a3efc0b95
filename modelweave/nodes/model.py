"""``model``: call one model (its own deployment, a co-located group, or inside the ingress)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from google.protobuf.message import Message as ProtoMessage
from pydantic import Field

from modelweave import speculation
from modelweave.adapters.base import resolve_adapter
from modelweave.errors import DeadlineExceeded, GraphSpecError, ModelError, ModelweaveError, ReplicaLost
from modelweave.fields import fmt_types
from modelweave.messages import part_name, set_part
from modelweave.nodes.base import NodeKind, TypeRule
from modelweave.retry import backoff_s
from modelweave.spec_base import BatchOverrides, DeploymentSettings, NodeBase
from modelweave.trace import node_deadline
from modelweave.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    from modelweave.checker import CheckedGraph, NodeInfo, Walker
    from modelweave.draw_graph import DrawingBuilder, Pending
    from modelweave.executor import Executor
    from modelweave.layout import Alt, Layout
    from modelweave.spec import Node
    from modelweave.trace import RequestContext

logger = logging.getLogger("modelweave.executor")


class ModelNode(NodeBase):
    """Calls one model, served as its own deployment."""

    kind: Literal["model"] = "model"
    impl: str = Field(..., description="import path of a ModelAdapter subclass or a function")
    params: dict[str, Any] = {}
    deployment: DeploymentSettings = DeploymentSettings()
    batch: BatchOverrides = BatchOverrides()
    cost: float = Field(1.0, ge=0, description="modelled cost units per call")
    idempotent: bool | None = Field(
        None, description="retry a call whose replica died; default: what the adapter declares")


@dataclass
class ModelReply:
    """A model's answer plus what it cost (callers that can measure CPU time return this)."""

    part: ProtoMessage
    cpu_ms: float = 0.0
    #: Wall time of the model inside its process; set for members of a co-located run,
    #: whose spans cannot be timed from outside one by one.
    latency_ms: float = 0.0


class ModelKind(NodeKind):
    """Type rule: the adapter's declared input parts must be available; it adds the part it produces."""

    kind = "model"
    spec = ModelNode
    shape = ('["', '"]')
    colour = ("#dbeafe", "#1d4ed8")

    def check(self, walker: Walker, node: ModelNode, path: str, available: frozenset[str],
              info: NodeInfo) -> TypeRule:
        checked = walker.checked
        if node.name in checked.models:
            raise GraphSpecError(
                f"{path}: model name {node.name!r} is already used at {checked.model_paths[node.name]}; "
                "model names are deployment names and must be unique in a graph"
            )
        try:
            cls, params = resolve_adapter(node.impl, node.params)
            consumes, produces = cls.signature(params)
            cls.validate_params(params)
            idempotent = node.idempotent if node.idempotent is not None else cls.is_idempotent(params)
            # Function adapters choose per node (params.blocking); classes declare it once.
            blocking = bool(getattr(cls.validate_params(params), "blocking", cls.blocking))
            consumes = tuple(part_name(c) for c in consumes)
            produces = part_name(produces)
        except GraphSpecError as exc:
            raise GraphSpecError(f"{path}: {exc.message}") from None
        missing = set(consumes) - available
        if missing:
            raise GraphSpecError(
                f"{path}: model {node.impl} consumes {fmt_types(set(consumes))} but its input only has "
                f"{fmt_types(available)} (missing {fmt_types(missing)})"
            )
        checked.models[node.name] = node
        checked.model_paths[node.name] = path
        info.consumes, info.produces, info.idempotent = consumes, produces, idempotent
        info.blocking = blocking
        return available | {produces}, {produces}, set(consumes)

    async def run(self, ex: Executor, node: ModelNode, msg: pb.Message, ctx: RequestContext, path: str,
                  attempt: int) -> pb.Message:
        typical = ex.hop_s.get(node.name)
        remaining = ctx.remaining_s()
        if typical is not None and remaining < typical:
            # Starting a call that cannot finish only takes capacity from requests that can.
            ctx.record(pb.Span(node=path, kind="model", model=node.impl, attempt=attempt, start_ms=ctx.elapsed_ms(),
                               error=DeadlineExceeded.status.value, detail="not started: deadline too close"))
            raise DeadlineExceeded(f"remaining budget of {remaining * 1000:.0f} ms cannot cover model "
                                   f"{node.name!r} (typically {typical * 1000:.0f} ms)", node=path)
        retry = 0
        while True:
            try:
                return await _call_model(ex, node, msg, ctx, path, attempt, retry)
            except ReplicaLost as exc:
                pause = backoff_s(retry + 1)
                if not (ex.graph.info(node).idempotent and ctx.remaining_s() > pause
                        and ex.retry_budget.try_spend()):
                    raise
                logger.info("request %s: retrying %s after %s", ctx.request_id, path, exc.message)
                retry += 1
                await asyncio.sleep(pause)

    def draw_lines(self, node: ModelNode, info: NodeInfo, graph: CheckedGraph) -> list[str]:
        from modelweave.draw_graph import model_label

        return model_label(info, graph)

    def draw(self, builder: DrawingBuilder, node: ModelNode, path: str, info: NodeInfo, pending: list[Pending],
             entry: str | None) -> tuple[str, list[Pending]]:
        from modelweave.draw_graph import Pending

        assert entry is not None
        return entry, [Pending(entry, info.available_in | {info.produces}, share=builder.rest(path, node))]

    def hop_alternatives(self, node: ModelNode, layout: Layout, limit: int, alts: Callable[[Node], list[Alt]],
                         product: Callable[[list[list[Alt]], int], list[Alt]]) -> list[Alt]:
        from modelweave.layout import Hop

        return [((), (Hop(layout.home[node.name], (node.name,)),))]


async def _call_model(ex: Executor, node: ModelNode, msg: pb.Message, ctx: RequestContext, path: str,
                      attempt: int, retry: int) -> pb.Message:
    start = time.monotonic()
    span = model_span(node, ctx, path, attempt, retry)
    try:
        reply: Any = await ex.caller.call(node, msg)
    except asyncio.CancelledError:
        # Cut off by a node timeout, the request's deadline or the client: the hop still shows
        # in the trace (and in the node error metrics), unless speculative work was thrown away.
        if not speculation.discarded():
            cut = node_deadline.get()
            late = ctx.remaining_s() <= 0 or (cut is not None and time.monotonic() >= cut)
            span.error = DeadlineExceeded.status.value if late else "CANCELLED"
            span.detail = "cut off before the model answered"
            span.latency_ms = (time.monotonic() - start) * 1000.0
            ctx.record(span)
        raise
    except Exception as exc:  # typed (or wrapped) by finish_model_call
        reply = exc
    return finish_model_call(ex, node, msg, ctx, path, span, start, reply)


def model_span(node: ModelNode, ctx: RequestContext, path: str, attempt: int, retry: int) -> pb.Span:
    """The span of one model call, started now."""
    return pb.Span(node=path, kind="model", model=node.impl, attempt=attempt, start_ms=ctx.elapsed_ms(),
                   retry=retry)


def finish_model_call(ex: Executor, node: ModelNode, msg: pb.Message, ctx: RequestContext, path: str,
                      span: pb.Span, start: float, reply: Any, *, observe: bool = True) -> pb.Message:
    """Records a finished model call and merges its part into ``msg``.

    The one place that types a call's outcome, for the row-by-row executor and the batch
    stage's columnar runner alike.

    Args:
        reply: What the caller answered: a :class:`~modelweave.executor.ModelReply`, a bare
            part, or the exception the call raised.
        observe: Fold the call's latency into the node's typical latency (a caller that
            answered many rows in one call folds it in once).

    Raises:
        ModelweaveError: the call failed (a plain exception becomes ``ModelError``), or the
            model returned another part type than its node declares.
    """
    span.latency_ms = (time.monotonic() - start) * 1000.0
    if isinstance(reply, BaseException):
        if isinstance(reply, ModelweaveError):
            reply.node = reply.node or path
            span.error = reply.status.value
            span.detail = reply.message[:300]
            ctx.record(span)
            raise reply
        # A model bug must surface as a typed error, not a hang.
        span.error = ModelError.status.value
        span.detail = f"{type(reply).__name__}: {reply}"[:300]
        ctx.record(span)
        raise ModelError(f"model failed: {type(reply).__name__}: {reply}", node=path) from reply
    if isinstance(reply, ModelReply):
        part, span.cpu_ms = reply.part, reply.cpu_ms
    else:
        part = reply
    expected = ex.graph.info(node).produces
    if not isinstance(part, ProtoMessage) or part.DESCRIPTOR.name != expected:
        got = part.DESCRIPTOR.full_name if isinstance(part, ProtoMessage) else type(part).__name__
        span.error = ModelError.status.value
        ctx.record(span)
        raise ModelError(f"model returned {got}, declared {expected}", node=path)
    bad = _non_finite(part)
    if bad:
        # NaN fails every comparison, so a route rule would silently take its default branch.
        span.error = ModelError.status.value
        ctx.record(span)
        raise ModelError(f"model answered a non-finite {bad}", node=path)
    set_part(msg, part, tensor_name=node.name)
    if isinstance(part, pb.Verdict):
        span.verdict = "passed" if part.passed else "failed"
    ctx.record(span)
    if observe:
        ex.observe_hop(node.name, span.latency_ms / 1000.0)
    return msg


def _non_finite(part: ProtoMessage) -> str:
    """The first score field of ``part`` that is NaN or infinite ("" when none): the values routes
    and aggregations compare (confidences and scores; embeddings and tensors are not read by rules)."""
    if isinstance(part, pb.Classification):
        if not math.isfinite(part.confidence):
            return f"classification.confidence ({part.confidence})"
        for s in part.scores:
            if not math.isfinite(s.score):
                return f"classification.scores score of {s.label!r} ({s.score})"
    elif isinstance(part, pb.Verdict | pb.Generation) and not math.isfinite(part.score):
        return f"{part_name(part.DESCRIPTOR.name)}.score ({part.score})"
    return ""
