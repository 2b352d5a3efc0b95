"""The transport-free graph executor.

One executor runs a checked graph over a *caller* (anything that can invoke a model
node): Serve deployment handles online, in-process adapters in unit tests, or model
stages offline. It is the single place that knows the flow patterns: chain,
parallel + aggregate, route, validate (retry / refine / escalate), cache, fallbacks,
per-node and per-request deadlines, and the trace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import Message as ProtoMessage

from modelweave.aggregate import aggregate
from modelweave.checker import CheckedGraph
from modelweave.conditions import evaluate, read_field
from modelweave.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ModelError,
    ModelweaveError,
    ReplicaLost,
)
from modelweave.messages import PART_FIELDS, clone, copy_parts, part_name, set_part
from modelweave.retry import RetryBudget, backoff_s
from modelweave.spec import (
    AdaptiveValue,
    CacheNode,
    ChainNode,
    ModelNode,
    Node,
    ParallelNode,
    RouteNode,
    ValidateNode,
)
from modelweave.state import CacheBackend, MemoryCache, MemoryState, StateStore, cache_key
from modelweave.trace import RequestContext, new_request_id, request_deadline
from modelweave.v1 import messages_pb2 as pb

logger = logging.getLogger("modelweave.executor")

#: Smoothing of each model's typical call latency (weight of the newest call).
_HOP_EWMA_ALPHA = 0.2


@dataclass
class ModelReply:
    """A model's answer plus what it cost (callers that can measure CPU time return this)."""

    part: ProtoMessage
    cpu_ms: float = 0.0
    #: Wall time of the model inside its process; set for members of a co-located run,
    #: whose spans cannot be timed from outside one by one.
    latency_ms: float = 0.0


class Caller(Protocol):
    """Invokes one model node on an envelope and returns the part it produced."""

    async def call(self, model: ModelNode, message: pb.Message) -> ProtoMessage | ModelReply:
        """Runs the model named ``model.name``."""
        ...


CacheFactory = Callable[[str, CacheNode], CacheBackend]


@dataclass
class Result:
    """What a graph run returns."""

    message: pb.Message
    trace: pb.Trace


class Executor:
    """Runs one checked graph.

    Args:
        graph: A graph that passed :func:`modelweave.checker.check_graph`.
        caller: How model nodes are invoked.
        cache_factory: Builds the shared backend of each cache node (default: in-process).
        state: Feedback variables shared across requests (default: in-process).
        state_refresh_s: How long a read feedback value is reused before re-reading, so
            a remote store costs one call per interval, not one per request.
        retry_budget: Bounds retries of calls whose replica was lost (default: 20 % of
            requests plus 10 per second).
    """

    def __init__(
        self,
        graph: CheckedGraph,
        caller: Caller,
        *,
        cache_factory: CacheFactory | None = None,
        state: StateStore | None = None,
        state_refresh_s: float = 1.0,
        retry_budget: RetryBudget | None = None,
    ) -> None:
        self.graph = graph
        self.retry_budget = retry_budget or RetryBudget()
        #: Typical (smoothed) seconds of a successful call, per model node name.
        self.hop_s: dict[str, float] = {}
        self.caller = caller
        self.state = state or MemoryState()
        self._state_refresh_s = state_refresh_s
        self._state_cache: dict[str, tuple[float, float]] = {}
        self._output_parts = frozenset(part_name(t) for t in graph.spec.output)
        factory = cache_factory or (lambda _path, node: MemoryCache(node.ttl_s, node.max_entries))
        self._caches = {
            info.path: factory(info.path, info.node)
            for info in graph.nodes.values()
            if isinstance(info.node, CacheNode)
        }
        # Co-located runs go out as one call only to callers that can take them (call_many).
        layout = graph.placement
        self._runs = layout.runs if layout is not None and callable(getattr(caller, "call_many", None)) else {}

    async def run(
        self,
        message: pb.Message,
        *,
        request_id: str = "",
        timeout_s: float | None = None,
        on_span: Callable[[pb.Span], None] | None = None,
    ) -> Result:
        """Runs the graph on one envelope.

        Args:
            message: The input envelope; it is not modified.
            request_id: Propagated into the trace and logs; generated when empty.
            timeout_s: Request deadline; defaults to the graph's ``timeout_s``.
            on_span: Called with each span as its hop finishes (streaming).

        Raises:
            ModelweaveError: a typed error (bad input, deadline, model failure ...).
        """
        self.check_input(message)
        spec = self.graph.spec
        budget = timeout_s if timeout_s else spec.timeout_s
        ctx = RequestContext(request_id=request_id or new_request_id(), deadline=time.monotonic() + budget,
                             on_span=on_span)
        self.retry_budget.deposit()
        token = request_deadline.set(time.time() + budget)
        try:
            async with asyncio.timeout(budget):
                out = await self._run(spec.flow, clone(message), ctx, spec.name, 1)
        except TimeoutError:
            err = DeadlineExceeded(f"request deadline of {budget * 1000:.0f} ms exceeded")
            err.trace = ctx.trace()
            raise err from None
        except ModelweaveError as exc:
            exc.trace = ctx.trace()  # the hops before the failure, for metrics and debugging
            raise
        finally:
            request_deadline.reset(token)
        return Result(self._project(out), ctx.trace())

    def _project(self, message: pb.Message) -> pb.Message:
        """Keeps only the parts the graph declares as ``output`` (all parts when it declares none).

        Intermediate parts such as a 384-float embedding stay inside the graph; clients get
        what the graph promises. Metadata is kept (it carries route hints and ids).
        """
        declared = self._output_parts
        if not declared:
            return message
        for short, field in PART_FIELDS.items():
            if short not in declared:
                message.ClearField(field)
        return message

    def feedback_values(self) -> dict[str, float]:
        """Last known value of each feedback variable this executor has read or adjusted."""
        return {state: value for state, (value, _) in self._state_cache.items()}

    def check_input(self, message: pb.Message) -> None:
        """Refuses an input that lacks a part the graph reads from its input.

        Raises:
            InvalidArgument: naming the missing field, e.g. ``input.text``.
        """
        for part in sorted(self.graph.nodes[f"{self.graph.spec.name}/{self.graph.spec.flow.name}"].reads):
            field = PART_FIELDS[part]
            present = bool(message.tensors) if part == "Tensor" else message.HasField(field)
            if not present:
                raise InvalidArgument(f"input.{field} is required by graph {self.graph.spec.name!r}")
        if message.HasField("text") and "Text" in self.graph.nodes[
            f"{self.graph.spec.name}/{self.graph.spec.flow.name}"
        ].reads and not message.text.content.strip():
            raise InvalidArgument("input.text.content must not be empty")

    # -- dispatch ---------------------------------------------------------------------

    async def _run(self, node: Node, msg: pb.Message, ctx: RequestContext, parent: str, attempt: int) -> pb.Message:
        path = f"{parent}/{node.name}"
        handler = getattr(self, f"_run_{node.kind}")
        # Nodes write into the envelope in place; with a fallback, keep the input intact
        # so the fallback runs on what this node received, not on a half-updated copy.
        work = msg if node.fallback is None else clone(msg)
        try:
            if node.timeout_s is None:
                return await handler(node, work, ctx, path, attempt)
            try:
                async with asyncio.timeout(node.timeout_s):
                    return await handler(node, work, ctx, path, attempt)
            except TimeoutError:
                raise DeadlineExceeded(f"node timeout of {node.timeout_s * 1000:.0f} ms exceeded",
                                       node=path) from None
        except ModelweaveError as exc:
            if node.fallback is None or ctx.remaining_s() <= 0:
                raise
            ctx.record(pb.Span(node=f"{path}/{node.fallback.name}", kind="fallback", attempt=attempt,
                               start_ms=ctx.elapsed_ms(), error=exc.status.value,
                               detail=f"fallback after {exc.status.value}: {exc.message}"[:300]))
            ctx.degraded += 1
            return await self._run(node.fallback, msg, ctx, path, attempt)

    async def _run_model(self, node: ModelNode, msg: pb.Message, ctx: RequestContext, path: str,
                         attempt: int) -> pb.Message:
        typical = self.hop_s.get(node.name)
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
                return await self._call_model(node, msg, ctx, path, attempt, retry)
            except ReplicaLost as exc:
                pause = backoff_s(retry + 1)
                if not (self.graph.info(node).idempotent and ctx.remaining_s() > pause
                        and self.retry_budget.try_spend()):
                    raise
                logger.info("request %s: retrying %s after %s", ctx.request_id, path, exc.message)
                retry += 1
                await asyncio.sleep(pause)

    async def _call_model(self, node: ModelNode, msg: pb.Message, ctx: RequestContext, path: str,
                          attempt: int, retry: int) -> pb.Message:
        start = time.monotonic()
        span = pb.Span(node=path, kind="model", model=node.impl, attempt=attempt, start_ms=ctx.elapsed_ms(),
                       retry=retry)
        try:
            reply = await self.caller.call(node, msg)
            if isinstance(reply, ModelReply):
                part, span.cpu_ms = reply.part, reply.cpu_ms
            else:
                part = reply
        except ModelweaveError as exc:
            exc.node = exc.node or path
            span.error = exc.status.value
            span.detail = exc.message[:300]
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a model bug must surface as a typed error, not a hang
            span.error = ModelError.status.value
            span.detail = f"{type(exc).__name__}: {exc}"[:300]
            raise ModelError(f"model failed: {type(exc).__name__}: {exc}", node=path) from exc
        finally:
            span.latency_ms = (time.monotonic() - start) * 1000.0
            if span.error:
                ctx.record(span)
        expected = self.graph.info(node).produces
        if not isinstance(part, ProtoMessage) or part.DESCRIPTOR.name != expected:
            got = part.DESCRIPTOR.full_name if isinstance(part, ProtoMessage) else type(part).__name__
            span.error = ModelError.status.value
            ctx.record(span)
            raise ModelError(f"model returned {got}, declared {expected}", node=path)
        set_part(msg, part, tensor_name=node.name)
        if isinstance(part, pb.Verdict):
            span.verdict = "passed" if part.passed else "failed"
        ctx.record(span)
        self.observe_hop(node.name, span.latency_ms / 1000.0)
        return msg

    def observe_hop(self, name: str, seconds: float) -> None:
        """Folds one successful call of model ``name`` into its typical latency."""
        previous = self.hop_s.get(name)
        self.hop_s[name] = seconds if previous is None else (
            (1 - _HOP_EWMA_ALPHA) * previous + _HOP_EWMA_ALPHA * seconds)

    async def _run_chain(self, node: ChainNode, msg: pb.Message, ctx: RequestContext, path: str,
                         attempt: int) -> pb.Message:
        i = 0
        while i < len(node.steps):
            run = self._runs.get(id(node.steps[i]))
            if run is None:
                msg = await self._run(node.steps[i], msg, ctx, path, attempt)
                i += 1
                continue
            from modelweave.group_calls import run_group  # it imports this module's ModelReply

            msg = await run_group(self, run, msg, ctx, path, attempt)
            i += len(run)
        return msg

    async def _run_parallel(self, node: ParallelNode, msg: pb.Message, ctx: RequestContext, path: str,
                            attempt: int) -> pb.Message:
        start = time.monotonic()
        span = pb.Span(node=path, kind="parallel", attempt=attempt, start_ms=ctx.elapsed_ms())
        outcomes = await asyncio.gather(
            *(self._run(b, clone(msg), ctx, path, attempt) for b in node.branches), return_exceptions=True
        )
        results: list[pb.Message | None] = []
        errors: list[BaseException] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                errors.append(outcome)
                results.append(None)
            else:
                results.append(outcome)
        needed = node.aggregate.min_successful or len(node.branches)
        succeeded = len(node.branches) - len(errors)
        if succeeded < needed:
            first = errors[0]
            span.error = first.status.value if isinstance(first, ModelweaveError) else ModelError.status.value
            span.detail = f"{succeeded}/{len(node.branches)} branches succeeded, {needed} needed"
            span.latency_ms = (time.monotonic() - start) * 1000.0
            ctx.record(span)
            raise first
        weights = node.aggregate.weights or [1.0] * len(node.branches)
        try:
            out, detail = aggregate(node.aggregate, msg, results, weights)
        except ModelweaveError as exc:
            exc.node = exc.node or path
            span.error = exc.status.value
            span.detail = exc.message[:300]
            span.latency_ms = (time.monotonic() - start) * 1000.0
            ctx.record(span)
            raise
        span.detail = detail + (f"; {len(errors)} branch(es) failed" if errors else "")
        span.latency_ms = (time.monotonic() - start) * 1000.0
        ctx.record(span)
        return out

    async def _threshold(self, var: AdaptiveValue) -> float:
        now = time.monotonic()
        cached = self._state_cache.get(var.state)
        if cached is not None and now - cached[1] < self._state_refresh_s:
            return cached[0]
        try:
            value = await self.state.get(var)
        except Exception:  # shared state down: keep serving with the last known value
            logger.warning("feedback state %s unavailable; using last value", var.state, exc_info=True)
            value = cached[0] if cached else var.initial
        self._state_cache[var.state] = (value, now)
        return value

    async def _run_route(self, node: RouteNode, msg: pb.Message, ctx: RequestContext, path: str,
                         attempt: int) -> pb.Message:
        start = time.monotonic()
        if node.router is not None:
            msg = await self._run(node.router, msg, ctx, path, attempt)
        chosen, reason = node.default, "default"
        for i, rule in enumerate(node.rules):
            tests = []
            adaptive = []  # "state=value" of the adaptive thresholds this rule read, for the trace
            for cond in rule.when:
                threshold = None
                if cond.value_from is not None:
                    threshold = await self._threshold(cond.value_from)
                    adaptive.append(f"{cond.value_from.state}={threshold:.3f}")
                tests.append(evaluate(cond, msg, threshold))
            if (all(tests) if rule.match == "all" else any(tests)):
                chosen, reason = rule.branch, f"rules[{i}]"
                if adaptive:
                    reason += f" ({', '.join(adaptive)})"
                break
        else:
            if node.router is not None and msg.classification.label in node.branches:
                chosen, reason = msg.classification.label, f"router label {msg.classification.label!r}"
        ctx.record(pb.Span(node=path, kind="route", attempt=attempt, start_ms=ctx.elapsed_ms(), route=chosen,
                           detail=reason, latency_ms=(time.monotonic() - start) * 1000.0))
        branch = node.branches[chosen]
        if branch is None:
            return msg
        watched = [fb for fb in node.feedback if fb.branches is None or chosen in fb.branches]
        before = [read_field(msg, fb.field) for fb in watched]
        out = await self._run(branch, msg, ctx, path, attempt)
        for fb, old in zip(watched, before, strict=True):
            changed = read_field(out, fb.field) != old
            delta = fb.on_changed if changed else fb.on_unchanged
            value = await self._adjust(fb.state, delta)
            if value is not None:
                ctx.record(pb.Span(node=path, kind="feedback", attempt=attempt, start_ms=ctx.elapsed_ms(),
                                   route=chosen, detail=f"{fb.state} {delta:+.4f} -> {value:.4f} "
                                   f"({fb.field} {'changed' if changed else 'unchanged'})"))
        return out

    async def _run_validate(self, node: ValidateNode, msg: pb.Message, ctx: RequestContext, path: str,
                            attempt: int) -> pb.Message:
        start = time.monotonic()
        base = clone(msg)
        last: pb.Message | None = None
        attempts = 1 if node.on_failure == "escalate" else node.max_attempts
        for n in range(1, attempts + 1):
            work = clone(base)
            work.metadata["attempt"] = str(n)
            if node.on_failure == "refine" and last is not None:
                work.verdict.CopyFrom(last.verdict)
            out = await self._run(node.target, work, ctx, path, n)
            out.ClearField("verdict")
            out = await self._run(node.validator, out, ctx, path, n)
            if out.verdict.passed:
                await self._feedback(node, passed=True)
                ctx.record(pb.Span(node=path, kind="validate", attempt=n, start_ms=ctx.elapsed_ms(),
                                   verdict="passed", latency_ms=(time.monotonic() - start) * 1000.0))
                return out
            await self._feedback(node, passed=False)
            last = out
        assert last is not None
        reason = last.verdict.reason or "validator said no"
        if node.escalate is not None:
            ctx.record(pb.Span(node=path, kind="validate", attempt=attempts, start_ms=ctx.elapsed_ms(),
                               verdict="failed", route="escalate", detail=f"escalating: {reason}"[:300],
                               latency_ms=(time.monotonic() - start) * 1000.0))
            work = clone(base)
            work.verdict.CopyFrom(last.verdict)
            work.metadata["escalated"] = path
            return await self._run(node.escalate, work, ctx, path, attempts + 1)
        ctx.record(pb.Span(node=path, kind="validate", attempt=attempts, start_ms=ctx.elapsed_ms(),
                           verdict="failed", detail=f"exhausted: {reason}"[:300],
                           latency_ms=(time.monotonic() - start) * 1000.0))
        if node.on_exhausted == "error":
            raise FailedPrecondition(f"validation failed after {attempts} attempt(s): {reason}", node=path)
        ctx.degraded += 1
        return last

    async def _feedback(self, node: ValidateNode, *, passed: bool) -> None:
        for update in node.feedback:
            delta = update.on_pass if passed else update.on_fail
            if not delta:
                continue
            await self._adjust(update.state, delta)

    async def _adjust(self, state: str, delta: float) -> float | None:
        """Moves a feedback variable; returns its new value (None when the store failed)."""
        if not delta:
            return None
        var = self.graph.states[state]
        try:
            value = await self.state.adjust(var, delta)
        except Exception:  # feedback is advisory; never fail the request for it
            logger.warning("feedback update of %s failed", state, exc_info=True)
            return None
        self._state_cache[var.state] = (value, time.monotonic())
        return value

    async def _run_cache(self, node: CacheNode, msg: pb.Message, ctx: RequestContext, path: str,
                         attempt: int) -> pb.Message:
        start = time.monotonic()
        info = self.graph.info(node)
        key = cache_key(self.graph.spec.name, path, _key_payload(msg, node, info.reads))
        backend = self._caches[path]
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
        out = await self._run(node.body, msg, ctx, path, attempt)
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
