"""``validate``: a validator model judges the target's output; retry, refine or escalate on failure."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from modelweave.errors import FailedPrecondition, GraphSpecError, ModelweaveError
from modelweave.messages import clone, full_name
from modelweave.nodes.base import DictSlot, NodeKind, TypeRule
from modelweave.nodes.model import ModelNode
from modelweave.spec_base import NodeBase, _Strict
from modelweave.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    from modelweave.checker import CheckedGraph, NodeInfo, Walker
    from modelweave.draw_graph import DrawingBuilder, Pending
    from modelweave.executor import Executor
    from modelweave.layout import Alt, Layout
    from modelweave.spec import Node
    from modelweave.trace import RequestContext


class FeedbackUpdate(_Strict):
    """Cross-request feedback: nudge a shared state variable after a verdict."""

    state: str
    on_pass: float = 0.0
    on_fail: float = 0.0


class ValidateNode(NodeBase):
    """Runs ``target``, asks ``validator`` for a Verdict, and loops on failure."""

    kind: Literal["validate"] = "validate"
    target: Node
    validator: ModelNode
    on_failure: Literal["retry", "refine", "escalate"] = "retry"
    max_attempts: int = Field(2, ge=1, le=10)
    escalate: Node | None = Field(None, description="stronger flow used when attempts run out")
    on_exhausted: Literal["accept", "error"] = "accept"
    feedback: list[FeedbackUpdate] = []

    @model_validator(mode="after")
    def _escalation(self) -> ValidateNode:
        if self.on_failure == "escalate" and self.escalate is None:
            raise ValueError("on_failure 'escalate' needs an 'escalate' flow")
        return self


class ValidateKind(NodeKind):
    """Type rule: the validator reads the target's output and must produce a Verdict; escalation may read it."""

    kind = "validate"
    spec = ValidateNode
    node_fields = ("target", "escalate")
    shape = ('[/"', '"/]')
    colour = ("#dcfce7", "#15803d")
    boxed = False

    def children(self, node: ValidateNode) -> Iterator[tuple[str, Node]]:
        yield "target", node.target
        yield "validator", node.validator
        if node.escalate is not None:
            yield "escalate", node.escalate

    def dict_children(self, data: dict[str, Any]) -> Iterator[DictSlot]:
        for slot in ("target", "validator", "escalate"):
            if data.get(slot):
                yield slot, data, slot

    def ablation(self, data: dict[str, Any]) -> tuple[dict[str, Any] | None, str] | None:
        return data["target"], "target only, no validation loop"

    def feedback_updates(self, node: ValidateNode) -> list[tuple[str, str | None]]:
        return [(fb.state, None) for fb in node.feedback]

    def check(self, walker: Walker, node: ValidateNode, path: str, available: frozenset[str],
              info: NodeInfo) -> TypeRule:
        # On 'refine' the target may read the previous Verdict, but only optionally:
        # the first attempt has none, so Verdict is not added to its input types.
        target_out = walker.walk(node.target, path, available, path, "target")
        t = walker.checked.info(node.target)
        validator_out = walker.walk(node.validator, path, target_out, t.path, "validator")
        v = walker.checked.info(node.validator)
        if v.produces != "Verdict":
            raise GraphSpecError(
                f"{v.path}: a validator must produce {full_name('Verdict')}, not {full_name(v.produces)}"
            )
        out = validator_out
        writes = set(t.writes) | {"Verdict"}
        reads = set(t.reads) | (set(v.reads) - set(t.writes))
        if node.escalate is not None:
            esc_out = walker.walk(node.escalate, path, available | {"Verdict"}, v.path, "escalate")
            e = walker.checked.info(node.escalate)
            out = (out & esc_out) | {"Verdict"}
            writes |= e.writes
            reads |= e.reads
        reads.discard("Verdict")
        return out, writes, reads

    async def run(self, ex: Executor, node: ValidateNode, msg: pb.Message, ctx: RequestContext, path: str,
                  attempt: int) -> pb.Message:
        start = time.monotonic()
        base = clone(msg)
        last: pb.Message | None = None
        attempts = attempt_count(node)
        for n in range(1, attempts + 1):
            try:
                out = await ex.run_node(node.target, attempt_input(node, base, n, last), ctx, path, n)
                out.ClearField("verdict")
                out = await ex.run_node(node.validator, out, ctx, path, n)
            except ModelweaveError as exc:
                record_failed_attempt(ctx, path, n, start, exc)
                raise
            await validation_feedback(ex, node, passed=out.verdict.passed)
            if out.verdict.passed:
                record_passed(ctx, path, n, start)
                return out
            last = out
        assert last is not None
        escalation = exhausted(node, base, last, ctx, path, start)
        if escalation is not None:
            failed: ModelweaveError | None = None
            try:
                return await ex.run_node(node.escalate, escalation, ctx, path, attempts + 1)  # type: ignore[arg-type]
            except ModelweaveError as exc:
                failed = exc
                raise
            finally:
                record_escalated(node, last, ctx, path, start, failed)
        return last

    def draw_lines(self, node: ValidateNode, info: NodeInfo, graph: CheckedGraph) -> list[str]:
        return [node.name, f"validate, max {node.max_attempts}"]

    def draw(self, builder: DrawingBuilder, node: ValidateNode, path: str, info: NodeInfo, pending: list[Pending],
             entry: str | None) -> tuple[str, list[Pending]]:
        from modelweave.draw_graph import DrawEdge, Pending, ordered

        t_path = f"{path}/{node.target.name}"
        if entry is not None:
            pending = [Pending(entry, info.available_in, share=builder.share(t_path))]
        target, t_exits = builder.enter(node.target, t_path, pending)
        validator, v_exits = builder.enter(node.validator, f"{path}/{node.validator.name}", t_exits)
        if node.on_failure != "escalate" and node.max_attempts > 1:
            # A retry reruns the target on the same input; refine also hands it the last Verdict.
            again = info.available_in | ({"Verdict"} if node.on_failure == "refine" else set())
            builder.drawing.edges.append(DrawEdge(validator, target, "retry", ordered(again),
                                                  f"{node.name}: {node.on_failure} (max {node.max_attempts})"))
        if node.escalate is None:
            return entry or target, v_exits
        passed = builder.rest(path, node, node.escalate)
        exits = [Pending(e.source, e.types, e.style, "passed", passed) for e in v_exits]
        e_path = f"{path}/{node.escalate.name}"
        _, e_exits = builder.enter(node.escalate, e_path, [
            Pending(validator, info.available_in | {"Verdict"}, "escalate", "escalate when failed",
                    builder.share(e_path))])
        return entry or target, exits + e_exits

    def hop_alternatives(self, node: ValidateNode, layout: Layout, limit: int, alts: Callable[[Node], list[Alt]],
                         product: Callable[[list[list[Alt]], int], list[Alt]]) -> list[Alt]:
        passed = product([alts(node.target), alts(node.validator)], limit)
        if node.escalate is None:
            return passed
        escalated = [((f"{node.name}=escalate", *c), h) for c, h in product([passed, alts(node.escalate)], limit)]
        return [((f"{node.name}=passed", *c), h) for c, h in passed] + escalated


async def validation_feedback(ex: Executor, node: ValidateNode, *, passed: bool) -> None:
    """Moves the node's feedback variables after one attempt passed or failed."""
    for update in node.feedback:
        delta = update.on_pass if passed else update.on_fail
        if not delta:
            continue
        await ex.adjust(update.state, delta)


def attempt_count(node: ValidateNode) -> int:
    """How many times the target runs before the node escalates or gives up."""
    return 1 if node.on_failure == "escalate" else node.max_attempts


def attempt_input(node: ValidateNode, base: pb.Message, n: int, last: pb.Message | None) -> pb.Message:
    """The target's input for attempt ``n``: the node's input, plus the last verdict when refining."""
    work = clone(base)
    work.metadata["attempt"] = str(n)
    if node.on_failure == "refine" and last is not None:
        work.verdict.CopyFrom(last.verdict)
    return work


def record_passed(ctx: RequestContext, path: str, n: int, start: float) -> None:
    """The node's span when attempt ``n`` passed."""
    ctx.record(pb.Span(node=path, kind="validate", attempt=n, start_ms=ctx.offset_ms(start), verdict="passed",
                       latency_ms=(time.monotonic() - start) * 1000.0))


def record_escalated(node: ValidateNode, last: pb.Message, ctx: RequestContext, path: str, start: float,
                     error: ModelweaveError | None = None) -> None:
    """The node's span once its escalation (a child of the node) has ended, so the span covers it."""
    reason = last.verdict.reason or "validator said no"
    ctx.record(pb.Span(node=path, kind="validate", attempt=attempt_count(node), start_ms=ctx.offset_ms(start),
                       verdict="failed", route="escalate", detail=f"escalating: {reason}"[:300],
                       error=error.status.value if error is not None else "",
                       latency_ms=(time.monotonic() - start) * 1000.0))


def record_failed_attempt(ctx: RequestContext, path: str, n: int, start: float, error: BaseException) -> None:
    """The node's span when attempt ``n``'s target or validator failed (a typed error ends the node)."""
    if isinstance(error, ModelweaveError):
        ctx.record(pb.Span(node=path, kind="validate", attempt=n, start_ms=ctx.offset_ms(start),
                           error=error.status.value, detail=f"attempt {n} failed: {error.message}"[:300],
                           latency_ms=(time.monotonic() - start) * 1000.0))


def exhausted(node: ValidateNode, base: pb.Message, last: pb.Message, ctx: RequestContext, path: str,
              start: float) -> pb.Message | None:
    """Ends a validation whose every attempt failed: records its span.

    Returns:
        The escalation's input when the node escalates; None when the last attempt's
        answer stands (the request is then degraded).

    Raises:
        FailedPrecondition: ``on_exhausted: error``.
    """
    attempts = attempt_count(node)
    reason = last.verdict.reason or "validator said no"
    if node.escalate is not None:  # its span is recorded when the escalation ends (record_escalated)
        work = clone(base)
        work.verdict.CopyFrom(last.verdict)
        work.metadata["escalated"] = path
        return work
    ctx.record(pb.Span(node=path, kind="validate", attempt=attempts, start_ms=ctx.offset_ms(start),
                       verdict="failed", detail=f"exhausted: {reason}"[:300],
                       latency_ms=(time.monotonic() - start) * 1000.0))
    if node.on_exhausted == "error":
        raise FailedPrecondition(f"validation failed after {attempts} attempt(s): {reason}", node=path)
    ctx.mark_degraded()
    return None
