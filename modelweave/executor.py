"""The transport-free graph executor.

One executor runs a checked graph over a *caller* (anything that can invoke a model
node): Serve deployment handles online, in-process adapters in unit tests, or model
stages offline. The core only dispatches: each node kind's run step lives in its module
of :mod:`modelweave.nodes` (chain, parallel + aggregate, route, validate, cache ...);
the core keeps what every kind shares: the request context and deadline, per-node
timeouts and fallbacks, feedback state, the trace, and the output projection.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import Message as ProtoMessage

from modelweave import speculation
from modelweave.checker import CheckedGraph
from modelweave.errors import DeadlineExceeded, InvalidArgument, ModelweaveError
from modelweave.messages import PART_FIELDS, clone, part_name
from modelweave.nodes import kind_of
from modelweave.nodes.model import ModelReply
from modelweave.nodes.shadow import Mirrors
from modelweave.retry import RetryBudget
from modelweave.semantic_cache import MemorySemanticCache, SemanticCacheBackend, SemanticIndex
from modelweave.shadow_outcome import ShadowOutcome
from modelweave.spec import AdaptiveValue, CacheNode, ModelNode, Node
from modelweave.state import CacheBackend, MemoryCache, MemoryState, StateStore
from modelweave.trace import RequestContext, new_request_id, node_deadline, request_deadline
from modelweave.v1 import messages_pb2 as pb

__all__ = [
    "CacheFactory", "Caller", "Executor", "ModelReply", "Result", "SemanticCacheFactory", "memory_semantic_cache",
    "take_fallback",
]

logger = logging.getLogger("modelweave.executor")

#: Recent successful calls per model from which its typical latency is estimated.
_HOP_WINDOW = 32
#: Quantile of that window taken as "typical". A low one, because the estimate decides whether
#: a call is started at all: calls that waited out a replica's restart (seconds) must not make
#: the next requests give up on a model that answers in milliseconds again (an average did:
#: after an 11 s restart it refused healthy calls with 504 for seconds).
_HOP_QUANTILE = 0.25


class Caller(Protocol):
    """Invokes one model node on an envelope and returns the part it produced."""

    async def call(self, model: ModelNode, message: pb.Message) -> ProtoMessage | ModelReply:
        """Runs the model named ``model.name``."""
        ...


CacheFactory = Callable[[str, CacheNode], CacheBackend]
SemanticCacheFactory = Callable[[str, CacheNode], SemanticCacheBackend]


def memory_semantic_cache(_path: str, node: CacheNode) -> SemanticCacheBackend:
    """An in-process semantic index for one ``key: semantic`` cache node."""
    return MemorySemanticCache(SemanticIndex(node.threshold, node.ttl_s, node.max_entries, guard=node.guard))


@dataclass
class Result:
    """What a graph run returns."""

    message: pb.Message
    trace: pb.Trace


def take_fallback(node: Node, exc: BaseException, ctx: RequestContext, path: str, attempt: int) -> bool:
    """Whether ``node``'s fallback answers after ``exc``; records the fallback span when it does.

    A fallback runs after a typed error while the request still has budget; the answer it
    gives is degraded (cache nodes do not store it).
    """
    if node.fallback is None or not isinstance(exc, ModelweaveError) or ctx.remaining_s() <= 0:
        return False
    ctx.record(pb.Span(node=f"{path}/{node.fallback.name}", kind="fallback", attempt=attempt,
                       start_ms=ctx.elapsed_ms(), error=exc.status.value,
                       detail=f"fallback after {exc.status.value}: {exc.message}"[:300]))
    ctx.mark_degraded()
    return True


class Executor:
    """Runs one checked graph.

    Args:
        graph: A graph that passed :func:`modelweave.checker.check_graph`.
        caller: How model nodes are invoked.
        cache_factory: Builds the shared backend of each exact-key cache node (default: in-process).
        semantic_cache_factory: Builds the index of each ``key: semantic`` cache node (default: in-process).
        state: Feedback variables shared across requests (default: in-process).
        state_refresh_s: How long a read feedback value is reused before re-reading, so
            a remote store costs one call per interval, not one per request.
        retry_budget: Bounds retries of calls whose replica was lost (default: 20 % of
            requests plus 10 per second).
        on_shadow: Receives the outcome of every mirrored run of a ``shadow`` node.
        shadow_inline: Shadow nodes wait for their candidates before answering, so no
            mirrored work is lost when the process ends (batch, eval); False (the ingress)
            leaves them running in the background, off the request path.
    """

    def __init__(
        self,
        graph: CheckedGraph,
        caller: Caller,
        *,
        cache_factory: CacheFactory | None = None,
        semantic_cache_factory: SemanticCacheFactory | None = None,
        state: StateStore | None = None,
        state_refresh_s: float = 1.0,
        retry_budget: RetryBudget | None = None,
        on_shadow: Callable[[ShadowOutcome], None] | None = None,
        shadow_inline: bool = True,
    ) -> None:
        self.graph = graph
        self.retry_budget = retry_budget or RetryBudget()
        #: Typical seconds of a successful call (low quantile of recent ones), per model node name.
        self.hop_s: dict[str, float] = {}
        self._hop_window: dict[str, tuple[deque[float], list[float]]] = {}
        self.caller = caller
        #: Mirrored runs of shadow nodes in flight, their counters and outcome delivery.
        self.mirrors = Mirrors(on_shadow, inline=shadow_inline)
        self.state = state or MemoryState()
        self._state_refresh_s = state_refresh_s
        self._state_cache: dict[str, tuple[float, float]] = {}
        self._output_parts = frozenset(part_name(t) for t in graph.spec.output)
        factory = cache_factory or (lambda _path, node: MemoryCache(node.ttl_s, node.max_entries))
        cache_nodes = [(info.path, info.node) for info in graph.nodes.values() if isinstance(info.node, CacheNode)]
        self.caches: dict[str, CacheBackend] = {p: factory(p, n) for p, n in cache_nodes if n.key == "exact"}
        semantic = semantic_cache_factory or memory_semantic_cache
        self.semantic_caches: dict[str, SemanticCacheBackend] = {
            p: semantic(p, n) for p, n in cache_nodes if n.key == "semantic"}
        # Co-located runs go out as one call only to callers that can take them (call_many).
        layout = graph.placement
        self.runs = layout.runs if layout is not None and callable(getattr(caller, "call_many", None)) else {}

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
                out = await self.run_node(spec.flow, clone(message), ctx, spec.name, 1)
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

    async def run_node(self, node: Node, msg: pb.Message, ctx: RequestContext, parent: str,
                       attempt: int) -> pb.Message:
        """Runs one node under ``parent`` (its kind's run step) with its timeout and fallback.

        Node kinds call this for their children; it is the only place that knows fallbacks
        and per-node timeouts.
        """
        path = f"{parent}/{node.name}"
        kind = kind_of(node)
        # Nodes write into the envelope in place; with a fallback, keep the input intact
        # so the fallback runs on what this node received, not on a half-updated copy.
        work = msg if node.fallback is None else clone(msg)
        try:
            if node.timeout_s is None:
                return await kind.run(self, node, work, ctx, path, attempt)
            ends = time.monotonic() + node.timeout_s
            outer = node_deadline.get()
            token = node_deadline.set(ends if outer is None else min(outer, ends))
            try:
                async with asyncio.timeout(node.timeout_s):
                    return await kind.run(self, node, work, ctx, path, attempt)
            except TimeoutError:
                raise DeadlineExceeded(f"node timeout of {node.timeout_s * 1000:.0f} ms exceeded",
                                       node=path) from None
            finally:
                node_deadline.reset(token)
        except ModelweaveError as exc:
            if not take_fallback(node, exc, ctx, path, attempt):
                raise
            assert node.fallback is not None
            return await self.run_node(node.fallback, msg, ctx, path, attempt)

    def observe_hop(self, name: str, seconds: float) -> None:
        """Folds one successful call of model ``name`` into its typical latency."""
        entry = self._hop_window.get(name)
        if entry is None:
            entry = self._hop_window[name] = (deque(), [])
        window, ordered = entry
        # The same quantile as sorting the window on every call, at a bisect per call: this
        # runs once per model hop, and the sort was ~6 % of a graph of rule models' CPU.
        if len(window) == _HOP_WINDOW:
            del ordered[bisect.bisect_left(ordered, window.popleft())]
        window.append(seconds)
        bisect.insort(ordered, seconds)
        self.hop_s[name] = ordered[int(_HOP_QUANTILE * (len(ordered) - 1))]

    # -- feedback state (read by route conditions, moved by route and validate feedback) --

    async def threshold(self, var: AdaptiveValue) -> float:
        """Current value of a feedback variable, re-read at most every ``state_refresh_s``."""
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

    async def adjust(self, state: str, delta: float) -> float | None:
        """Moves a feedback variable; returns its new value (None when the store failed)."""
        if not delta:
            return None
        if not await speculation.committed():  # work a cache hit discarded must not move shared state
            return None
        var = self.graph.states[state]
        try:
            value = await self.state.adjust(var, delta)
        except Exception:  # feedback is advisory; never fail the request for it
            logger.warning("feedback update of %s failed", state, exc_info=True)
            return None
        self._state_cache[var.state] = (value, time.monotonic())
        return value
