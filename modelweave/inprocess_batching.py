"""Dynamic batching of one adapter's calls: in a model replica, in the ingress, in a batch stage.

Cheap scikit-learn models pay most of their CPU per *call* (input validation, sparse-matrix
assembly): TF-IDF costs ~2.2 ms for one row and ~0.5 ms per row in a batch of 16; spaCy's
``nlp.pipe`` halves presidio's cost per row. :class:`InProcessBatcher` batches concurrent
calls *opportunistically*: a call that arrives while no batch is running starts a batch at
once; calls that arrive while one runs wait and go together, up to ``max_batch_size``, as
the next batch. The wait is what the model is busy for, so an idle model adds no latency,
and a busy one gets batches as large as its load allows.

``serve.batch`` (Ray 2.60) cannot do this: it forms the next batch while the previous one
runs, so with a zero timeout every batch has one row, and with a timeout every call, even
on an idle replica, waits for it (5 ms per hop on the triage path). An optional
``wait_s`` (the node's ``batch_wait_timeout_s``) still lets a batch wait for more rows
before it starts, for models whose cost per row keeps falling with size (GPUs).

Rows are isolated as in a replica (:func:`modelweave.model_calls.predict_rows`): a failing
row fails alone, rows whose caller's deadline passed are skipped, each row reports its
share of the batch's CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from modelweave.adapters.base import ModelAdapter
from modelweave.errors import Unavailable
from modelweave.model_calls import Outcome, predict_rows_async
from modelweave.trace import request_trace
from modelweave.v1 import messages_pb2 as pb


@dataclass
class _Call:
    message: pb.Message
    deadline: float | None
    trace: tuple[str, str] | None
    future: asyncio.Future[Outcome] = field(repr=False)


class InProcessBatcher:
    """Runs concurrent calls of one adapter as batches, one batch at a time.

    Args:
        adapter: A loaded adapter (blocking ones run in a thread).
        max_batch_size: Most rows in one batch.
        wait_s: How long a batch that is not full waits for more rows before it starts
            (0: starts at once).
    """

    def __init__(self, adapter: ModelAdapter, max_batch_size: int, wait_s: float = 0.0) -> None:
        self.adapter = adapter
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self._full = asyncio.Event()
        self._queue: list[_Call] = []
        self._worker: asyncio.Task[None] | None = None
        #: Sizes of the batches run so far (tests, benchmarks).
        self.batch_sizes: list[int] = []

    async def call(self, message: pb.Message, deadline: float | None,
                   trace: tuple[str, str] | None = None) -> Outcome:
        """Queues one envelope and waits for its row's outcome (a reply or a typed error).

        Args:
            message: The envelope.
            deadline: Its request's wall-clock (Unix) deadline; the row is skipped once passed.
            trace: Its request's W3C context (default: this task's, :data:`request_trace`).
        """
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append(_Call(message, deadline, trace or request_trace.get(), future))
        if len(self._queue) >= self.max_batch_size:
            self._full.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._drain())
        # A cancelled caller cancels only its own future; the batch it is in still runs for the others.
        return await future

    async def _drain(self) -> None:
        try:
            await self._run_batches()
        finally:
            # The worker stopped while calls were still queued (cancelled with its event loop,
            # or a BaseException out of the adapter): they get an answer, not a wait forever.
            left, self._queue = self._queue, []
            for c in left:
                if not c.future.done():
                    c.future.set_exception(self._stopped())

    async def _run_batches(self) -> None:
        while self._queue:
            if self.wait_s > 0 and len(self._queue) < self.max_batch_size:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.wait_s)
            batch = [c for c in self._queue[:self.max_batch_size] if not c.future.done()]
            del self._queue[:self.max_batch_size]
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            try:
                outcomes = await predict_rows_async(self.adapter, [c.message for c in batch],
                                                    [c.deadline for c in batch], [c.trace for c in batch])
            except BaseException as exc:  # only cancellation or a bug: never leave a caller hanging
                for c in batch:
                    if not c.future.done():
                        c.future.set_exception(exc if isinstance(exc, Exception) else self._stopped(exc))
                if not isinstance(exc, Exception):
                    raise
                continue
            for c, outcome in zip(batch, outcomes, strict=True):
                if not c.future.done():
                    c.future.set_result(outcome)

    def _stopped(self, exc: BaseException | None = None) -> Unavailable:
        why = f" ({type(exc).__name__})" if exc is not None else ""
        return Unavailable(f"the batch worker of model {type(self.adapter).__name__} stopped{why}; "
                           "the call did not run")
