"""Columnar runs: a graph over many rows at once, node by node (the batch stage's fast path).

The row-by-row executor runs each row as its own coroutine, so every row pays the
executor's Python for every hop (its awaits, the caller's layers, a ``predict`` of one):
~15 us per hop, several times what a rule-based model costs. A graph stage holds hundreds
of rows at once; this runner walks the graph once per Ray Data batch instead: a model node
gets one call with every row that reaches it (one ``predict`` for an inline model), a route
splits the rows by branch, a cache looks every key up and runs its body on the misses only.

It is not a second executor: each node kind's rules (how a call's outcome is typed, the
branch a route takes, how parallel branches are joined, how a validation ends, what a cache
stores) are the kinds' own functions, shared with :class:`modelweave.executor.Executor`,
and every row still gets its own trace, one span per hop, as row by row. Parity with the
row-by-row executor is tested node kind by node kind (``tests/unit/test_columnar.py``).

What differs, on purpose:

* **Within one batch, a cache key is computed once.** Rows with the same key wait for the
  first one's answer and count as hits (row by row, the single-flight cache gives the same
  result). When that answer is not stored (degraded, or the row failed), the other rows run
  the body themselves, together.
* **A walk shares its deadline**: every row's budget starts with the walk. A row whose
  remaining budget cannot cover a model's typical latency is not started, as row by row. The
  stage walks a big batch in chunks sized to take at most a quarter of the budget
  (:mod:`modelweave.batch.chunks`), so the deadline measures a slow model, not the batch.
* **Feedback reaches the next batch**: routes read feedback variables once per batch (the
  stage already read them once per batch row by row).

A node this runner does not walk itself (``shadow``, a semantic or speculative cache, any
node with its own ``timeout_s``) is run by the executor's ``run_node``, one row at a time and
all rows at once, inside the columnar walk: :func:`row_by_row_parts` lists them. Co-located
groups (``deployment.group``) do not matter here: a graph stage calls each model node on its
own (its caller has no ``call_many``).
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from typing import Any

from modelweave.batch.columnar_cache import CacheColumns, Failures, Rows
from modelweave.checker import CheckedGraph
from modelweave.errors import DeadlineExceeded, ModelError, ModelweaveError, ReplicaLost
from modelweave.executor import Executor, Result, take_fallback
from modelweave.messages import clone
from modelweave.nodes.model import finish_model_call, model_span
from modelweave.nodes.parallel import join_branches
from modelweave.nodes.route import choose_branch, read_thresholds, route_feedback, watched_fields
from modelweave.nodes.split import choose_split
from modelweave.nodes.validate import (
    attempt_count,
    attempt_input,
    exhausted,
    record_escalated,
    record_failed_attempt,
    record_passed,
    validation_feedback,
)
from modelweave.retry import backoff_s
from modelweave.spec import CacheNode, ChainNode, ModelNode, Node, ParallelNode, RouteNode, SplitNode, ValidateNode
from modelweave.trace import RequestContext, new_request_id, request_deadline
from modelweave.v1 import messages_pb2 as pb

_KINDS = frozenset({"model", "chain", "route", "split", "cache", "parallel", "validate"})


def runs_columnar(node: Node) -> bool:
    """Whether this runner walks ``node`` itself (else the executor runs it, row by row)."""
    if node.kind not in _KINDS or node.timeout_s is not None:
        return False
    return not (isinstance(node, CacheNode) and (node.key != "exact" or node.speculate))


def row_by_row_parts(graph: CheckedGraph) -> list[str]:
    """The outermost nodes of ``graph`` that a columnar run hands to the executor row by row.

    Returns:
        ``"<node path> (<why>)"`` for each, e.g. ``"g/main/expensive (a shadow node)"``.
    """
    outermost: list[str] = []
    parts: list[str] = []
    for path in sorted(graph.nodes, key=len):  # a parent's path is a prefix of its children's
        node = graph.nodes[path].node
        if runs_columnar(node) or any(path.startswith(p + "/") for p in outermost):
            continue
        outermost.append(path)
        why = (f"a {node.kind} node" if node.kind not in _KINDS
               else "timeout_s" if node.timeout_s is not None else "a semantic or speculative cache")
        parts.append(f"{path} ({why})")
    return parts


class ColumnarRunner(CacheColumns):
    """Runs the rows of one batch through an executor's graph together.

    Args:
        executor: The stage's executor: its graph, caller (``call_batch`` when it has one),
            caches, feedback state and hop statistics are used as they are row by row.
    """

    def __init__(self, executor: Executor) -> None:
        if executor.runs:
            # A caller that serves co-located runs in one call (online); a graph stage has none.
            raise ValueError(f"graph {executor.graph.spec.name!r} cannot run columnar: its caller serves "
                             "co-located runs of model nodes (call_many), which go out row by row")
        self.ex = executor
        self._ctx: list[RequestContext] = []
        # Rows the top-level chain dropped with their own error (a chain absorbs no failure):
        # a deadline that cuts the walk short leaves them that error, not DEADLINE_EXCEEDED.
        self._settled: dict[int, BaseException] = {}

    async def run(self, messages: list[pb.Message], *, timeout_s: float | None = None,
                  request_ids: list[str] | None = None) -> list[Result | BaseException]:
        """Runs every envelope; returns each row's result or its typed error, in order.

        An error carries the row's trace so far (``exc.trace``), as the executor's do. Several
        runs may be in flight at once (each keeps its rows' contexts on its own copy).
        """
        return await copy.copy(self)._run(messages, timeout_s, request_ids)

    async def _run(self, messages: list[pb.Message], timeout_s: float | None,
                   request_ids: list[str] | None) -> list[Result | BaseException]:
        ex = self.ex
        budget = timeout_s if timeout_s else ex.graph.spec.timeout_s
        now = time.monotonic()
        ids = request_ids or [""] * len(messages)
        self._ctx = [RequestContext(request_id=rid or new_request_id(), deadline=now + budget, started=now)
                     for rid in ids]
        self._settled = {}
        outcomes: list[Result | BaseException | None] = [None] * len(messages)
        rows: Rows = []
        for i, message in enumerate(messages):
            try:
                ex.check_input(message)
            except ModelweaveError as bad:  # refused before it started, as row by row: no trace
                outcomes[i] = bad
                continue
            ex.retry_budget.deposit()
            rows.append((i, clone(message)))
        token = request_deadline.set(time.time() + budget)
        try:
            async with asyncio.timeout(budget):
                done, failed = await self.node(ex.graph.spec.flow, rows, ex.graph.spec.name, 1)
        except TimeoutError:
            # Every row still on its way fails; a row that had already failed keeps its error.
            # (Rows are walked together, so a row that finished its branch of a route still
            # waits for the other branches and fails with the rest: columnar runs share a deadline.)
            done, failed = [], [(i, self._settled.get(i) or DeadlineExceeded(
                f"request deadline of {budget * 1000:.0f} ms exceeded")) for i, _ in rows]
        finally:
            request_deadline.reset(token)
        for i, msg in done:
            outcomes[i] = Result(ex._project(msg), self._ctx[i].trace())
        for i, exc in failed:
            if isinstance(exc, ModelweaveError):
                exc.trace = self._ctx[i].trace()
            outcomes[i] = exc
        return [o if o is not None else _lost() for o in outcomes]

    # -- dispatch -----------------------------------------------------------------------

    async def node(self, node: Node, rows: Rows, parent: str, attempt: int) -> tuple[Rows, Failures]:
        """Runs one node on ``rows`` (the executor's ``run_node``): succeeded rows, failed rows."""
        if not rows:
            return [], []
        if not runs_columnar(node):
            return await self._row_by_row(node, rows, parent, attempt)
        path = f"{parent}/{node.name}"
        if node.fallback is None:
            return await self._kind(node, rows, path, attempt)
        # As row by row: the fallback runs on what the node received, not a half-updated copy.
        done, failed = await self._kind(node, [(i, clone(m)) for i, m in rows], path, attempt)
        if not failed:
            return done, failed
        inputs = dict(rows)
        again: Rows = []
        lost: Failures = []
        for i, exc in failed:
            if take_fallback(node, exc, self._ctx[i], path, attempt):
                again.append((i, inputs[i]))
            else:
                lost.append((i, exc))
        saved, still = await self.node(node.fallback, again, path, attempt)
        return done + saved, lost + still

    async def _row_by_row(self, node: Node, rows: Rows, parent: str, attempt: int) -> tuple[Rows, Failures]:
        """The executor's own run of ``node`` for each row, all rows at once (timeouts, fallback included)."""
        outcomes = await asyncio.gather(*(self.ex.run_node(node, msg, self._ctx[i], parent, attempt)
                                          for i, msg in rows), return_exceptions=True)
        done: Rows = []
        failed: Failures = []
        for (i, _), outcome in zip(rows, outcomes, strict=True):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, BaseException):
                failed.append((i, outcome))
            else:
                done.append((i, outcome))
        return done, failed

    async def _kind(self, node: Node, rows: Rows, path: str, attempt: int) -> tuple[Rows, Failures]:
        if isinstance(node, ModelNode):
            return await self._model(node, rows, path, attempt)
        if isinstance(node, ChainNode):
            failed: Failures = []
            final = node is self.ex.graph.spec.flow and node.fallback is None
            for step in node.steps:
                rows, lost = await self.node(step, rows, path, attempt)
                failed += lost
                if final:
                    self._settled.update(lost)
            return rows, failed
        if isinstance(node, RouteNode):
            return await self._route(node, rows, path, attempt)
        if isinstance(node, SplitNode):
            return await self._split(node, rows, path, attempt)
        if isinstance(node, CacheNode):
            return await self._cache(node, rows, path, attempt)
        if isinstance(node, ParallelNode):
            return await self._parallel(node, rows, path, attempt)
        if isinstance(node, ValidateNode):
            return await self._validate(node, rows, path, attempt)
        raise ValueError(f"{path}: a {node.kind} node cannot run columnar")  # node() sends it row by row

    # -- kinds ----------------------------------------------------------------------------

    async def _model(self, node: ModelNode, rows: Rows, path: str, attempt: int) -> tuple[Rows, Failures]:
        ex = self.ex
        idempotent = ex.graph.info(node).idempotent
        done: Rows = []
        failed: Failures = []
        retry = 0
        while rows:
            ready = self._startable(node, rows, path, attempt, failed) if retry == 0 else rows
            if not ready:
                break
            spans = [model_span(node, self._ctx[i], path, attempt, retry) for i, _ in ready]
            start = time.monotonic()
            replies = await self._call(node, [m for _, m in ready])
            call_s = time.monotonic() - start
            rows = []
            answered = False
            pause = backoff_s(retry + 1)
            for (i, msg), span, reply in zip(ready, spans, replies, strict=True):
                ctx = self._ctx[i]
                try:
                    done.append((i, finish_model_call(ex, node, msg, ctx, path, span, start, reply, observe=False)))
                    answered = True
                except ReplicaLost as exc:  # the executor's retry of a lost replica, where it may retry
                    if idempotent and ctx.remaining_s() > pause and ex.retry_budget.try_spend():
                        rows.append((i, msg))
                    else:
                        failed.append((i, exc))
                except ModelweaveError as exc:
                    failed.append((i, exc))
            if answered:  # one call, one latency: what a row's call took
                ex.observe_hop(node.name, call_s)
            if rows:
                retry += 1
                await asyncio.sleep(pause)
        return done, failed

    def _startable(self, node: ModelNode, rows: Rows, path: str, attempt: int, failed: Failures) -> Rows:
        """The rows whose budget can cover a call of ``node`` (the others fail, as row by row)."""
        typical = self.ex.hop_s.get(node.name)
        ready: Rows = []
        for i, msg in rows:
            ctx = self._ctx[i]
            remaining = ctx.remaining_s()
            if typical is not None and remaining < typical:
                # A call that cannot finish only takes capacity from rows that can.
                ctx.record(pb.Span(node=path, kind="model", model=node.impl, attempt=attempt,
                                   start_ms=ctx.elapsed_ms(), error=DeadlineExceeded.status.value,
                                   detail="not started: deadline too close"))
                failed.append((i, DeadlineExceeded(
                    f"remaining budget of {remaining * 1000:.0f} ms cannot cover model {node.name!r} "
                    f"(typically {typical * 1000:.0f} ms)", node=path)))
            else:
                ready.append((i, msg))
        return ready

    async def _call(self, node: ModelNode, messages: list[pb.Message]) -> list[Any]:
        caller = self.ex.caller
        batch = getattr(caller, "call_batch", None)
        if batch is not None:
            replies = list(await batch(node, messages))
        else:
            replies = list(await asyncio.gather(*(caller.call(node, m) for m in messages), return_exceptions=True))
        for reply in replies:
            if isinstance(reply, asyncio.CancelledError):
                raise reply
        return replies

    async def _route(self, node: RouteNode, rows: Rows, path: str, attempt: int) -> tuple[Rows, Failures]:
        start = time.monotonic()
        failed: Failures = []
        if node.router is not None:
            rows, failed = await self.node(node.router, rows, path, attempt)
        thresholds = await read_thresholds(self.ex, node)
        done, by_branch = self._branch(rows, node.branches, path, attempt, "route", start,
                                       lambda msg: choose_branch(node, msg, thresholds))
        for chosen, (branch, branch_rows) in by_branch.items():
            before = {i: watched_fields(node, chosen, msg) for i, msg in branch_rows}
            outs, lost = await self.node(branch, branch_rows, path, attempt)
            for i, out in outs:
                await route_feedback(self.ex, node, chosen, before[i], out, self._ctx[i], path, attempt)
            done += outs
            failed += lost
        return done, failed

    async def _split(self, node: SplitNode, rows: Rows, path: str, attempt: int) -> tuple[Rows, Failures]:
        done, by_branch = self._branch(rows, node.branches, path, attempt, "split", time.monotonic(),
                                       lambda msg: choose_split(node, msg, path))
        failed: Failures = []
        for branch, branch_rows in by_branch.values():
            outs, lost = await self.node(branch, branch_rows, path, attempt)
            done += outs
            failed += lost
        return done, failed

    def _branch(self, rows: Rows, branches: dict[str, Node | None], path: str, attempt: int, kind: str,
                start: float, choose: Callable[[pb.Message], tuple[str, str]],
                ) -> tuple[Rows, dict[str, tuple[Node, Rows]]]:
        """Records each row's branch (a route's or split's span); returns the pass-through rows and the rest."""
        through: Rows = []
        by_branch: dict[str, tuple[Node, Rows]] = {}
        for i, msg in rows:
            chosen, detail = choose(msg)
            ctx = self._ctx[i]
            ctx.record(pb.Span(node=path, kind=kind, attempt=attempt, start_ms=ctx.offset_ms(start), route=chosen,
                               detail=detail, latency_ms=(time.monotonic() - start) * 1000.0))
            branch = branches[chosen]
            if branch is None:
                through.append((i, msg))
            else:
                by_branch.setdefault(chosen, (branch, []))[1].append((i, msg))
        return through, by_branch

    async def _parallel(self, node: ParallelNode, rows: Rows, path: str, attempt: int) -> tuple[Rows, Failures]:
        start = time.monotonic()
        spans = {i: pb.Span(node=path, kind="parallel", attempt=attempt, start_ms=self._ctx[i].elapsed_ms())
                 for i, _ in rows}
        branch_runs = await asyncio.gather(*(self.node(b, [(i, clone(m)) for i, m in rows], path, attempt)
                                             for b in node.branches))
        outcomes: dict[int, list[Any]] = {i: [None] * len(node.branches) for i, _ in rows}
        for b, (outs, lost) in enumerate(branch_runs):
            for i, value in [*outs, *lost]:
                outcomes[i][b] = value
        done: Rows = []
        failed: Failures = []
        for i, msg in rows:
            try:
                done.append((i, join_branches(self.ex, node, msg, outcomes[i], self._ctx[i], path, spans[i], start)))
            except BaseException as exc:  # the first branch error, or the aggregation's
                if isinstance(exc, asyncio.CancelledError):
                    raise
                failed.append((i, exc))
        return done, failed

    async def _validate(self, node: ValidateNode, rows: Rows, path: str, attempt: int) -> tuple[Rows, Failures]:
        start = time.monotonic()
        base = {i: clone(msg) for i, msg in rows}
        last: dict[int, pb.Message] = {}
        pending = [i for i, _ in rows]
        done: Rows = []
        failed: Failures = []
        attempts = attempt_count(node)
        for n in range(1, attempts + 1):
            if not pending:
                break
            work = [(i, attempt_input(node, base[i], n, last.get(i))) for i in pending]
            outs, lost = await self.node(node.target, work, path, n)
            for _, out in outs:
                out.ClearField("verdict")
            more, lost_too = await self.node(node.validator, outs, path, n)
            outs = more
            for i, exc in lost + lost_too:
                record_failed_attempt(self._ctx[i], path, n, start, exc)
            failed += lost + lost_too
            pending = []
            for i, out in outs:
                await validation_feedback(self.ex, node, passed=out.verdict.passed)
                if out.verdict.passed:
                    record_passed(self._ctx[i], path, n, start)
                    done.append((i, out))
                else:
                    last[i] = out
                    pending.append(i)
        escalations: Rows = []
        for i in pending:
            try:
                escalation = exhausted(node, base[i], last[i], self._ctx[i], path, start)
            except ModelweaveError as exc:
                failed.append((i, exc))
                continue
            if escalation is None:
                done.append((i, last[i]))
            else:
                escalations.append((i, escalation))
        if escalations:
            assert node.escalate is not None
            lost = []
            try:
                outs, lost = await self.node(node.escalate, escalations, path, attempts + 1)
            finally:
                errors = {i: exc for i, exc in lost if isinstance(exc, ModelweaveError)}
                for i, _ in escalations:
                    record_escalated(node, last[i], self._ctx[i], path, start, errors.get(i))
            done += outs
            failed += lost
        return done, failed


def _lost() -> BaseException:
    return ModelError("internal error: the row got no outcome")

