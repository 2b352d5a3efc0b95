"""Running a run of co-located model nodes as one call (see :mod:`modelweave.layout`).

Two halves share this module so they cannot drift apart:

* :func:`run_members` runs a sequence of loaded adapters in-process on one envelope,
  each reading what the previous ones wrote (the group replica and ``LocalCaller``).
* :func:`run_group` is the executor's side: one ``call_many`` for the run, then one span,
  one ``cpuMs`` and one type check per node, exactly as if each had been called alone;
  the hop-budget check and the replica-lost retries of single calls apply to the run.

A caller opts in by having ``call_many(models, message)``; callers without it are
called one node at a time, so the ``Caller`` protocol is unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from google.protobuf.message import Message as ProtoMessage

from modelweave.adapters.base import ModelAdapter
from modelweave.errors import DeadlineExceeded, ModelError, ModelweaveError, ReplicaLost
from modelweave.messages import clone, set_part
from modelweave.model_calls import Outcome, predict_rows
from modelweave.retry import backoff_s
from modelweave.spec import ModelNode
from modelweave.trace import RequestContext
from modelweave.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    from modelweave.executor import Executor

logger = logging.getLogger("modelweave.executor")


class GroupCaller(Protocol):
    """A caller that can run consecutive co-located model nodes in one call."""

    async def call_many(self, models: Sequence[ModelNode], message: pb.Message) -> list[Outcome]:
        """Runs ``models`` in order; one outcome per model, stopping after the first error."""
        ...


def run_members(members: Sequence[tuple[str, str, ModelAdapter]], message: pb.Message,
                deadline: float | None = None) -> list[Outcome]:
    """Runs adapters in sequence on one envelope, in this process.

    Args:
        members: ``(node name, produced part type, loaded adapter)`` per node, in order.
        message: The envelope; not modified (the run works on a copy).
        deadline: The request's wall-clock deadline: a member whose caller has given up
            is skipped (DEADLINE_EXCEEDED), as a replica skips a single call.

    Returns:
        One outcome per member that ran, each with its own ``latency_ms`` and ``cpu_ms``;
        the run stops after an error or a part of the wrong type (the executor names it).
    """
    work = clone(message)
    outcomes: list[Outcome] = []
    for name, produces, adapter in members:
        start = time.perf_counter()
        outcome = predict_rows(adapter, [work], [deadline])[0]
        outcomes.append(outcome)
        if isinstance(outcome, ModelweaveError):
            break
        outcome.latency_ms = (time.perf_counter() - start) * 1000.0
        part = outcome.part
        if not isinstance(part, ProtoMessage) or part.DESCRIPTOR.name != produces:
            break
        set_part(work, part, tensor_name=name)
    return outcomes


async def run_group(ex: Executor, run: Sequence[ModelNode], msg: pb.Message, ctx: RequestContext, parent: str,
                    attempt: int) -> pb.Message:
    """Runs consecutive chain steps ``run`` (one group) with one ``call_many``.

    Raises:
        ModelweaveError: the first failing node's error, naming that node.
    """
    paths = [f"{parent}/{m.name}" for m in run]
    typical = [ex.hop_s.get(m.name) for m in run]
    remaining = ctx.remaining_s()
    if all(t is not None for t in typical) and remaining < sum(t or 0.0 for t in typical):
        # As for single calls: starting what cannot finish only takes capacity from requests that can.
        ctx.record(pb.Span(node=paths[0], kind="model", model=run[0].impl, attempt=attempt,
                           start_ms=ctx.elapsed_ms(), error=DeadlineExceeded.status.value,
                           detail="not started: deadline too close"))
        raise DeadlineExceeded(f"remaining budget of {remaining * 1000:.0f} ms cannot cover models "
                               f"{', '.join(m.name for m in run)}", node=paths[0])
    idempotent = all(ex.graph.info(m).idempotent for m in run)
    retry = 0
    while True:
        try:
            return await _call_run(ex, run, paths, msg, ctx, attempt, retry)
        except ReplicaLost as exc:
            # The whole call was lost; members ran in order in one replica, so a retry is safe
            # exactly when every member is idempotent.
            pause = backoff_s(retry + 1)
            if not (idempotent and ctx.remaining_s() > pause and ex.retry_budget.try_spend()):
                raise
            logger.info("request %s: retrying %s after %s", ctx.request_id, ", ".join(paths), exc.message)
            retry += 1
            await asyncio.sleep(pause)


async def _call_run(ex: Executor, run: Sequence[ModelNode], paths: list[str], msg: pb.Message,
                    ctx: RequestContext, attempt: int, retry: int) -> pb.Message:
    start = time.monotonic()
    offset = ctx.elapsed_ms()
    caller = ex.caller
    try:
        outcomes = await caller.call_many(run, msg)  # type: ignore[attr-defined]
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # The call itself failed (transport, overload): charged to the run's first node.
        err = exc if isinstance(exc, ModelweaveError) else ModelError(f"model failed: {type(exc).__name__}: {exc}")
        err.node = err.node or paths[0]
        ctx.record(pb.Span(node=paths[0], kind="model", model=run[0].impl, attempt=attempt, start_ms=offset,
                           retry=retry, error=err.status.value, detail=err.message[:300],
                           latency_ms=(time.monotonic() - start) * 1000.0))
        if err is exc:
            raise
        raise err from exc
    wall_ms = (time.monotonic() - start) * 1000.0
    inner_ms = sum(o.latency_ms for o in outcomes if not isinstance(o, ModelweaveError))
    # The time no member measured goes to one span, so the spans still add up to the wall time:
    # a failing member's (an error carries no latency; its time is most of what is left), else
    # the first's (the transport cost belongs to the call, which the first node opened).
    failing = next((i for i, o in enumerate(outcomes) if isinstance(o, ModelweaveError)), 0)
    for i, (node, outcome) in enumerate(zip(run, outcomes, strict=False)):
        latency = (outcome.latency_ms if not isinstance(outcome, ModelweaveError) else 0.0) + (
            max(0.0, wall_ms - inner_ms) if i == failing else 0.0)
        span = pb.Span(node=paths[i], kind="model", model=node.impl, attempt=attempt, start_ms=offset,
                       retry=retry, latency_ms=latency)
        offset += latency
        if isinstance(outcome, ModelweaveError):
            outcome.node = outcome.node or paths[i]
            span.error, span.detail = outcome.status.value, outcome.message[:300]
            ctx.record(span)
            raise outcome
        part = outcome.part
        expected = ex.graph.info(node).produces
        if not isinstance(part, ProtoMessage) or part.DESCRIPTOR.name != expected:
            got = part.DESCRIPTOR.full_name if isinstance(part, ProtoMessage) else type(part).__name__
            span.error = ModelError.status.value
            ctx.record(span)
            raise ModelError(f"model returned {got}, declared {expected}", node=paths[i])
        set_part(msg, part, tensor_name=node.name)
        span.cpu_ms = outcome.cpu_ms
        if isinstance(part, pb.Verdict):
            span.verdict = "passed" if part.passed else "failed"
        ctx.record(span)
        ex.observe_hop(node.name, latency / 1000.0)
    if len(outcomes) < len(run):
        raise ModelError(f"group call answered {len(outcomes)} of {len(run)} models", node=paths[len(outcomes)])
    return msg
