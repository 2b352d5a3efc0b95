"""Answering a batch of envelopes with one adapter, one outcome per row.

Shared by the Serve model deployment (dynamic batching) and the batch job's pool
workers, so online and batch isolate a failing row the same way: when the adapter fails
on a batch of several envelopes, each is run alone and only the row that fails gets an
error; the other rows (other clients' requests, online) get their answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from modelweave.adapters.base import ModelAdapter, predict_measured
from modelweave.errors import DeadlineExceeded, ModelError, ModelweaveError
from modelweave.executor import ModelReply
from modelweave.trace import row_traces, rows_deadline
from modelweave.v1 import messages_pb2 as pb

Outcome = ModelReply | ModelweaveError


def predict_rows(adapter: ModelAdapter, batch: Sequence[pb.Message],
                 deadlines: Sequence[float | None] | None = None) -> list[Outcome]:
    """Runs ``adapter`` on ``batch``; returns a reply or a typed error per row, in order.

    Args:
        adapter: A loaded adapter.
        batch: The envelopes.
        deadlines: Wall-clock (Unix) deadline per row, if its caller sent one: rows whose
            deadline has passed are answered DEADLINE_EXCEEDED without running the model
            (their caller has given up; running them only delays the others).
    """
    outcomes: list[Outcome | None] = [None] * len(batch)
    live: list[int] = []
    now = time.time()
    for i in range(len(batch)):
        deadline = deadlines[i] if deadlines is not None else None
        if deadline is not None and deadline <= now:
            outcomes[i] = DeadlineExceeded("the caller's deadline passed before the model started; skipped")
        else:
            live.append(i)
    if live:
        rows = [batch[i] for i in live]
        row_deadlines = [deadlines[i] if deadlines is not None else None for i in live]
        token = rows_deadline.set(None if None in row_deadlines else max(d for d in row_deadlines if d is not None))
        try:
            answers: list[Outcome] = _predict(adapter, rows)
        except Exception as exc:
            if len(rows) == 1:
                answers = [typed_model_error(exc)]
            else:  # each row alone, unless its caller gave up while the batch ran
                answers = [_predict_one(adapter, m, d) for m, d in zip(rows, row_deadlines, strict=True)]
        finally:
            rows_deadline.reset(token)
        for i, answer in zip(live, answers, strict=True):
            outcomes[i] = answer
    return [o for o in outcomes if o is not None]


async def predict_rows_async(adapter: ModelAdapter, batch: Sequence[pb.Message],
                             deadlines: Sequence[float | None],
                             traces: Sequence[tuple[str, str] | None]) -> list[Outcome]:
    """:func:`predict_rows` from an event loop, each row under its request's trace context.

    Blocking (CPU-bound) adapters run in a thread, so a replica keeps serving health checks
    and the ingress keeps serving other requests; the thread inherits the trace contexts.
    """
    with row_traces(batch, traces):
        if adapter.blocking:
            return await asyncio.to_thread(predict_rows, adapter, batch, deadlines)
        return predict_rows(adapter, batch, deadlines)


def _predict(adapter: ModelAdapter, batch: Sequence[pb.Message]) -> list[Outcome]:
    outputs, cpu_ms = predict_measured(adapter, batch)
    if len(outputs) != len(batch):
        raise ModelError(f"adapter returned {len(outputs)} outputs for {len(batch)} inputs")
    return [ModelReply(part, cpu_ms) for part in outputs]


def _predict_one(adapter: ModelAdapter, message: pb.Message, deadline: float | None = None) -> Outcome:
    if deadline is not None and deadline <= time.time():
        return DeadlineExceeded("the caller's deadline passed while its batch ran and failed; not run alone")
    token = rows_deadline.set(deadline)
    try:
        return _predict(adapter, [message])[0]
    except Exception as exc:
        return typed_model_error(exc)
    finally:
        rows_deadline.reset(token)


def typed_model_error(exc: BaseException) -> ModelweaveError:
    """A model's exception as a typed error (typed ones pass through)."""
    if isinstance(exc, ModelweaveError):
        return exc
    return ModelError(f"model failed: {type(exc).__name__}: {exc}")
