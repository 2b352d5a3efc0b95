"""``shadow``: answer with ``primary``, mirror the request to ``candidates`` and compare, off the request path.

Each mirrored request runs every candidate on a copy of the node's *input* with its own
request context and deadline, as a background task: the primary's answer, trace and
deadline never depend on a candidate (its errors are swallowed and counted). When both
sides have finished, one :class:`ShadowOutcome` per candidate says, for every ``compare``
field, whether the two agree and by how much a number moved. Outcomes go to the
executor owner's ``on_shadow`` callback (the ingress turns them into metrics, see
:meth:`modelweave.observe.TraceMetrics.record_shadow`) and, with ``sink:``, to a JSONL
file that ``modelweave eval --shadow-log`` reads.

In-flight mirrored runs are bounded per executor (``max_pending``): past it the mirror is
shed and counted, so a slow candidate costs the replica a bounded amount of memory. Where
the process ends with the work (batch jobs, ``modelweave eval``, tests) the executor runs
mirrors *inline* (its default, :class:`Mirrors`): the node waits for its candidates (which
ran concurrently with the primary) before returning, so no mirrored work is lost, at the
price of latency nobody is waiting on. The ingress asks for background mirrors.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from modelweave import speculation
from modelweave.errors import GraphSpecError, ModelweaveError
from modelweave.fields import field_part
from modelweave.messages import clone
from modelweave.nodes.base import DictSlot, NodeKind, TypeRule
from modelweave.shadow_outcome import ShadowOutcome, Snapshot, compare_fields, snapshot, write_record
from modelweave.spec_base import NodeBase
from modelweave.trace import RequestContext, request_deadline
from modelweave.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    from modelweave.checker import CheckedGraph, NodeInfo, Walker
    from modelweave.draw_graph import DrawingBuilder, Pending
    from modelweave.executor import Executor
    from modelweave.layout import Alt, Layout
    from modelweave.spec import Node

__all__ = ["Mirrors", "ShadowKind", "ShadowNode", "ShadowOutcome"]

logger = logging.getLogger("modelweave.shadow")

#: Delivery failures (callback or sink) logged per executor before going quiet.
_LOG_BUDGET = 20


class ShadowNode(NodeBase):
    """Answers with ``primary``; mirrors the request to ``candidates`` and records their agreement."""

    kind: Literal["shadow"] = "shadow"
    primary: Node
    candidates: list[Node] = Field(..., min_length=1, description="flows mirrored the same input; never answer")
    compare: list[str] = Field(
        ["classification.label", "classification.confidence"], min_length=1,
        description="envelope fields compared between the primary's and each candidate's output")
    sample: float = Field(1.0, ge=0, le=1, description="share of requests mirrored")
    max_pending: int = Field(64, ge=1, description="mirrored runs in flight per executor; more are shed")
    candidate_timeout_s: float | None = Field(
        None, gt=0, description="deadline of each mirrored run; default the graph's timeout_s (the node's own "
                                "timeout_s bounds the primary, as on any node)")
    tolerance: float = Field(0.0, ge=0, description="numbers within this of each other count as equal")
    sink: str | None = Field(None, description="JSONL file, one record per mirrored request and candidate "
                                               "(~ and $VARS expanded; relative to the process's directory)")


class ShadowKind(NodeKind):
    """Type rule: the output is the primary's; candidates are checked on the same input, their writes dropped."""

    kind = "shadow"
    spec = ShadowNode
    node_fields = ("primary",)
    shape = ('[/"', '"/]')
    colour = ("#e0f2fe", "#0369a1")

    def children(self, node: ShadowNode) -> Iterator[tuple[str, Node]]:
        yield "primary", node.primary
        for candidate in node.candidates:
            yield "mirror", candidate

    def dict_children(self, data: dict[str, Any]) -> Iterator[DictSlot]:
        # Only the primary: ablating inside a candidate changes no answer and only costs
        # evaluation runs; ablating the shadow node itself (-> its primary) drops every mirror.
        yield "primary", data, "primary"

    def ablation(self, data: dict[str, Any]) -> tuple[dict[str, Any] | None, str] | None:
        return data["primary"], "primary only, no mirrors"

    def check(self, walker: Walker, node: ShadowNode, path: str, available: frozenset[str],
              info: NodeInfo) -> TypeRule:
        out = walker.walk(node.primary, path, available, path, "primary")
        primary = walker.checked.info(node.primary)
        for j, name in enumerate(node.compare):
            field_part(name, out, f"{path}: compare[{j}] (primary {node.primary.name!r})")
        reads = set(primary.reads)
        for candidate in node.candidates:
            cand_out = walker.walk(candidate, path, available, path, "mirror")
            cand = walker.checked.info(candidate)
            reads |= cand.reads  # the input must carry what a candidate reads too
            for j, name in enumerate(node.compare):
                field_part(name, cand_out, f"{path}: compare[{j}] (candidate {candidate.name!r})")
            _refuse_feedback(walker, cand.path)
        # A candidate's writes never reach the output: it runs on its own copy of the input.
        return out, set(primary.writes), reads

    async def run(self, ex: Executor, node: ShadowNode, msg: pb.Message, ctx: RequestContext, path: str,
                  attempt: int) -> pb.Message:
        start = time.monotonic()
        mirrors: Mirrors = ex.mirrors
        primary: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()
        # Copies of the input before the primary writes into it in place.
        tasks, route, detail = mirrors.start(ex, node, msg, ctx, path, primary)
        try:
            out = await ex.run_node(node.primary, msg, ctx, path, attempt)
        except BaseException as exc:
            if not primary.done():  # candidates then finish without a comparison
                status = exc.status.value if isinstance(exc, ModelweaveError) else type(exc).__name__
                primary.set_result(Snapshot({}, (time.monotonic() - start) * 1000.0, status))
            if isinstance(exc, ModelweaveError):  # the node's span, as when the primary answers
                ctx.record(pb.Span(node=path, kind="shadow", attempt=attempt, start_ms=ctx.offset_ms(start),
                                   route=route, detail=detail, error=exc.status.value,
                                   latency_ms=(time.monotonic() - start) * 1000.0))
            raise
        primary.set_result(snapshot(out, node.compare, (time.monotonic() - start) * 1000.0))
        if tasks and mirrors.inline:
            await asyncio.wait(tasks)  # mirrors never raise; see Mirrors._mirror
        ctx.record(pb.Span(node=path, kind="shadow", attempt=attempt, start_ms=ctx.offset_ms(start), route=route,
                           detail=detail, latency_ms=(time.monotonic() - start) * 1000.0))
        return out

    def draw_lines(self, node: ShadowNode, info: NodeInfo, graph: CheckedGraph) -> list[str]:
        mirrored = f"{node.sample:.0%} mirrored" if node.sample < 1 else "all mirrored"
        return [node.name, f"shadow x{len(node.candidates)}, {mirrored}"]

    def draw(self, builder: DrawingBuilder, node: ShadowNode, path: str, info: NodeInfo, pending: list[Pending],
             entry: str | None) -> tuple[str, list[Pending]]:
        from modelweave.draw_graph import Pending

        assert entry is not None
        p_path = f"{path}/{node.primary.name}"
        _, exits = builder.enter(node.primary, p_path, [
            Pending(entry, info.available_in, role="primary", share=builder.share(p_path))])
        # Mirrors end in a comparison box that leads nowhere: their answers never reach the output.
        compare = builder.box(f"{path}#compare", "join", ["compare " + ", ".join(node.compare)])
        for candidate in node.candidates:
            c_path = f"{path}/{candidate.name}"
            _, c_exits = builder.enter(candidate, c_path, [
                Pending(entry, info.available_in, "mirror", "mirror", builder.share(c_path))])
            builder.connect(c_exits, compare)
        return entry, exits

    def hop_alternatives(self, node: ShadowNode, layout: Layout, limit: int, alts: Callable[[Node], list[Alt]],
                         product: Callable[[list[list[Alt]], int], list[Alt]]) -> list[Alt]:
        return alts(node.primary)  # mirrors are off the request path


def _refuse_feedback(walker: Walker, root: str) -> None:
    """A candidate must not move feedback state: the primary reads it, so mirrors would change answers."""
    from modelweave.nodes import kind_of

    for path, info in walker.checked.nodes.items():
        if (path == root or path.startswith(root + "/")) and kind_of(info.node).feedback_updates(info.node):
            raise GraphSpecError(f"{path}: feedback inside a shadow candidate would move state the primary "
                                 "reads; remove the feedback from the candidate")


class Mirrors:
    """Mirrored runs of one executor: the bounded set in flight, counters, and outcome delivery.

    Args:
        on_shadow: Called with every outcome (compared, candidate error, shed); must not block.
        inline: Wait for the candidates inside the node (batch, eval, tests) instead of
            leaving them running in the background (online serving).
        seed: Seeds the ``sample`` draw (tests).
    """

    def __init__(self, on_shadow: Callable[[ShadowOutcome], None] | None = None, *, inline: bool = True,
                 seed: int | None = None) -> None:
        self.on_shadow = on_shadow
        self.inline = inline
        self._rng = random.Random(seed)
        self._pending: dict[str, set[asyncio.Task[None]]] = {}
        #: (node path, event) -> count; events: mirrored, skipped, shed, compared, error,
        #: primary_failed, delivery_error.
        self.counts: dict[tuple[str, str], int] = {}
        self._log_budget = _LOG_BUDGET

    def pending(self, path: str | None = None) -> int:
        """Mirrored runs in flight (of one shadow node, or all)."""
        if path is not None:
            return len(self._pending.get(path, ()))
        return sum(len(tasks) for tasks in self._pending.values())

    def count(self, path: str, event: str) -> int:
        """How often ``event`` happened at shadow node ``path``."""
        return self.counts.get((path, event), 0)

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Waits for every mirrored run in flight; True when none is left."""
        tasks = {t for tasks in self._pending.values() for t in tasks}
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        return self.pending() == 0

    def _bump(self, path: str, event: str, n: int = 1) -> None:
        self.counts[(path, event)] = self.counts.get((path, event), 0) + n

    def start(self, ex: Executor, node: ShadowNode, msg: pb.Message, ctx: RequestContext, path: str,
              primary: asyncio.Future[Snapshot]) -> tuple[list[asyncio.Task[None]], str, str]:
        """Starts the mirrors of one request; returns (tasks, span route, span detail)."""
        if node.sample < 1.0 and self._rng.random() >= node.sample:
            self._bump(path, "skipped")
            return [], "skipped", f"not sampled (sample {node.sample:g})"
        pending = self._pending.setdefault(path, set())
        budget = ex.graph.spec.timeout_s if node.candidate_timeout_s is None else node.candidate_timeout_s
        if self.inline:  # the request waits for its mirrors: leave the rest of the flow half of its time
            budget = min(budget, max(ctx.remaining_s() / 2, 1e-3))
        tasks, shed = [], []
        now = time.time()
        for candidate in node.candidates:
            if len(pending) >= node.max_pending:
                shed.append(candidate.name)
                self._bump(path, "shed")
                self._deliver(node, ShadowOutcome(ex.graph.spec.name, path, candidate.name, ctx.request_id, now,
                                                  "shed", tuple(node.compare)))
                continue
            coro = self._mirror(ex, node, candidate, clone(msg), ctx.request_id, path, budget, now, primary)
            task = asyncio.get_running_loop().create_task(coro, name=f"shadow {path}/{candidate.name}")
            pending.add(task)
            task.add_done_callback(pending.discard)  # the set is the only strong reference
            tasks.append(task)
        self._bump(path, "mirrored", len(tasks))
        if shed:
            route = "shed" if not tasks else "mirrored"
            return tasks, route, f"shed {', '.join(shed)}: {node.max_pending} mirrored runs in flight"
        return tasks, "mirrored", "mirrored to " + ", ".join(c.name for c in node.candidates)

    async def _mirror(self, ex: Executor, node: ShadowNode, candidate: Node, msg: pb.Message, request_id: str,
                      path: str, budget: float, started_at: float, primary: asyncio.Future[Snapshot]) -> None:
        """Runs one candidate on its own copy and context, then compares; never raises (but cancellation)."""
        start = time.monotonic()
        # Its own deadline: the task inherited the primary request's (a context variable).
        token = request_deadline.set(time.time() + budget)
        ctx = RequestContext(request_id=request_id, deadline=start + budget)
        out: pb.Message | None = None
        error = ""
        try:
            async with asyncio.timeout(budget):
                out = await ex.run_node(candidate, msg, ctx, path, 1)
        except TimeoutError:
            error = f"DEADLINE_EXCEEDED: mirrored run exceeded {budget * 1000:.0f} ms"
        except ModelweaveError as exc:
            error = f"{exc.status.value}: {exc.message}"[:300]
        except Exception as exc:  # a candidate's bug must never surface anywhere but here
            error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            request_deadline.reset(token)
        candidate_ms = (time.monotonic() - start) * 1000.0
        theirs = snapshot(out, node.compare, candidate_ms) if out is not None else Snapshot({}, candidate_ms, error)
        ours = await primary  # always resolved by the node (also when the primary fails)
        if not await speculation.committed():  # the request was answered from a cache: no comparison
            self._bump(path, "discarded")
            return
        graph = ex.graph.spec.name
        if ours.error:  # nothing to compare with; the record still tells the candidate's fate
            self._bump(path, "primary_failed")
            outcome = ShadowOutcome(graph, path, candidate.name, request_id, started_at, "primary_failed",
                                    tuple(node.compare), primary_ms=ours.ms, candidate_ms=candidate_ms, error=error,
                                    primary_error=ours.error)
        elif error:
            self._bump(path, "error")
            outcome = ShadowOutcome(graph, path, candidate.name, request_id, started_at, "error", tuple(node.compare),
                                    primary_ms=ours.ms, candidate_ms=candidate_ms, error=error)
        else:
            self._bump(path, "compared")
            outcome = ShadowOutcome(graph, path, candidate.name, request_id, started_at, "compared",
                                    tuple(node.compare), compare_fields(ours, theirs, node.compare, node.tolerance),
                                    primary_ms=ours.ms, candidate_ms=candidate_ms)
        self._deliver(node, outcome)

    def _deliver(self, node: ShadowNode, outcome: ShadowOutcome) -> None:
        """Hands an outcome to the sink file and the owner's callback; their failures are counted, not raised."""
        try:
            if node.sink and outcome.result != "shed":
                write_record(node.sink, outcome.record())
            if self.on_shadow is not None:
                self.on_shadow(outcome)
        except Exception:
            self._bump(outcome.node, "delivery_error")
            if self._log_budget > 0:
                self._log_budget -= 1
                logger.warning("shadow outcome of %s not delivered", outcome.node, exc_info=True)
