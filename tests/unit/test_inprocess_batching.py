"""In-process dynamic batching of inline nodes and shared adapters (pure asyncio, no Ray)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from modelweave.adapters.base import ModelAdapter, load_shared
from modelweave.errors import DeadlineExceeded, ModelError, Unavailable
from modelweave.executor import ModelReply
from modelweave.inprocess_batching import InProcessBatcher
from modelweave.model_calls import predict_rows
from modelweave.v1 import messages_pb2 as pb


class Upper(ModelAdapter):
    """Upper-cases text; slow enough for calls to pile up; fails on 'boom'."""

    produces = "Text"
    loads = 0

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def load(self) -> None:
        type(self).loads += 1

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Text]:
        self.gate.wait(5)
        texts = [m.text.content for m in batch]
        self.batches.append(texts)
        if "boom" in texts:
            raise ValueError("bad row")
        time.sleep(0.02)
        return [pb.Text(content=t.upper()) for t in texts]


def msg(text: str) -> pb.Message:
    return pb.Message(text=pb.Text(content=text))


async def busy(max_batch_size: int = 8) -> tuple[Upper, InProcessBatcher, asyncio.Future[object]]:
    """A batcher whose first call ("warm") is running and held until ``adapter.gate`` is set."""
    adapter = Upper()
    batcher = InProcessBatcher(adapter, max_batch_size=max_batch_size)
    adapter.gate.clear()
    first = asyncio.ensure_future(batcher.call(msg("warm"), None))
    await asyncio.sleep(0.03)
    return adapter, batcher, first


async def test_idle_call_runs_at_once_and_calls_arriving_meanwhile_share_the_next_batch() -> None:
    adapter, batcher, first = await busy()
    rest = [asyncio.ensure_future(batcher.call(msg(t), None)) for t in "bcdef"]
    await asyncio.sleep(0.01)
    adapter.gate.set()
    replies = await asyncio.gather(first, *rest)
    assert adapter.batches == [["warm"], ["b", "c", "d", "e", "f"]]
    assert [r.part.content for r in replies if isinstance(r, ModelReply)] == ["WARM", *"BCDEF"]
    assert batcher.batch_sizes == [1, 5]


async def test_batches_never_exceed_max_batch_size() -> None:
    adapter = Upper()
    batcher = InProcessBatcher(adapter, max_batch_size=3)
    adapter.gate.clear()
    calls = [asyncio.ensure_future(batcher.call(msg(str(i)), None)) for i in range(8)]
    await asyncio.sleep(0.02)
    adapter.gate.set()
    await asyncio.gather(*calls)
    assert max(batcher.batch_sizes) <= 3 and sum(batcher.batch_sizes) == 8


async def test_a_failing_row_fails_alone_and_expired_rows_are_skipped() -> None:
    adapter, batcher, first = await busy()
    good = asyncio.ensure_future(batcher.call(msg("ok"), None))
    bad = asyncio.ensure_future(batcher.call(msg("boom"), None))
    late = asyncio.ensure_future(batcher.call(msg("late"), time.time() - 1))
    await asyncio.sleep(0.01)
    adapter.gate.set()
    await first
    assert isinstance(await good, ModelReply) and (await good).part.content == "OK"
    assert isinstance(await bad, ModelError) and "bad row" in str(await bad)
    assert isinstance(await late, DeadlineExceeded)
    assert ["late"] not in adapter.batches and all("late" not in b for b in adapter.batches)


async def test_a_cancelled_caller_leaves_the_others_their_answers() -> None:
    adapter, batcher, first = await busy()
    gone = asyncio.ensure_future(batcher.call(msg("gone"), None))
    stays = asyncio.ensure_future(batcher.call(msg("stays"), None))
    await asyncio.sleep(0)
    gone.cancel()
    adapter.gate.set()
    await first
    assert (await stays).part.content == "STAYS"
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert all("gone" not in b for b in adapter.batches)  # dropped before it ran


def test_load_shared_loads_one_copy_per_model_and_params() -> None:
    Upper.loads = 0
    impl = f"{__name__}:Upper"
    adapters = load_shared([("a", impl, {}), ("b", impl, {}), ("c", "modelweave.examples.rules:Normaliser", {})])
    assert adapters["a"] is adapters["b"] and adapters["c"] is not adapters["a"]
    assert Upper.loads == 1


async def test_serving_local_caller_shares_copies_and_batches_nodes_that_ask_for_it() -> None:
    from modelweave.checker import check_graph
    from modelweave.local import LocalCaller
    from modelweave.spec import parse_graph

    impl = f"{__name__}:Upper"
    batched = {"inline": True, "batching": {"max_batch_size": 4}}
    graph = check_graph(parse_graph({
        "name": "g", "input": ["Text"], "output": ["Text"],
        "flow": {"kind": "chain", "name": "main", "steps": [
            {"kind": "model", "name": "first", "impl": impl, "deployment": batched},
            {"kind": "model", "name": "again", "impl": impl, "deployment": batched},
            {"kind": "model", "name": "plain", "impl": impl, "deployment": {"inline": True}},
        ]}}))
    serving = LocalCaller(graph, serving=True)
    assert serving.adapters["first"] is serving.adapters["again"] is serving.adapters["plain"]
    assert serving.batchers["first"] is serving.batchers["again"] and "plain" not in serving.batchers
    replies = await asyncio.gather(*(serving.call(graph.models["first"], msg(str(i))) for i in range(6)))
    assert [r.part.content for r in replies] == [str(i) for i in range(6)]
    assert max(serving.batchers["first"].batch_sizes) > 1  # calls queued behind the first batch went together
    plain = LocalCaller(graph)  # evaluation / tests: one copy per node, no batching
    assert plain.adapters["first"] is not plain.adapters["again"] and not plain.batchers


class Fatal(BaseException):
    """Not an Exception: escapes the adapter's error handling, as a KeyboardInterrupt would."""


async def test_a_worker_that_dies_answers_the_calls_still_queued() -> None:
    adapter, batcher, first = await busy(max_batch_size=1)
    queued = [asyncio.ensure_future(batcher.call(msg(t), None)) for t in ("b", "c")]
    await asyncio.sleep(0)
    assert batcher._worker is not None
    batcher._worker.cancel()  # e.g. the event loop shutting down
    adapter.gate.set()
    outcomes = await asyncio.wait_for(asyncio.gather(first, *queued, return_exceptions=True), 2)
    assert all(isinstance(o, Unavailable) and "stopped" in str(o) for o in outcomes), outcomes


async def test_a_baseexception_from_the_adapter_fails_its_batch_and_the_queue_typed() -> None:
    class Dies(Upper):
        def predict(self, batch: Sequence[pb.Message]) -> list[pb.Text]:
            if batch[0].text.content == "fatal":
                raise Fatal()
            return super().predict(batch)

    batcher = InProcessBatcher(Dies(), max_batch_size=1)
    calls = [asyncio.ensure_future(batcher.call(msg(t), None)) for t in ("fatal", "b", "c")]
    outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 2)
    assert isinstance(outcomes[0], Unavailable) and "Fatal" in str(outcomes[0])
    assert all(isinstance(o, Unavailable) for o in outcomes[1:]), outcomes
    # The next call starts a new worker.
    assert (await asyncio.wait_for(batcher.call(msg("d"), None), 2)).part.content == "D"


def test_rows_whose_caller_gave_up_during_a_failed_batch_are_not_run_alone() -> None:
    soon = time.time() + 0.01  # passes while the failing batch runs (it sleeps 20 ms first)

    class SlowFail(Upper):
        def predict(self, batch: Sequence[pb.Message]) -> list[pb.Text]:
            time.sleep(0.03)
            return super().predict(batch)

    adapter = SlowFail()
    outcomes = predict_rows(adapter, [msg("boom"), msg("x"), msg("y")], [None, soon, None])
    assert isinstance(outcomes[0], ModelError)
    assert isinstance(outcomes[1], DeadlineExceeded) and "while its batch ran" in str(outcomes[1])
    assert outcomes[2].part.content == "Y"
    assert adapter.batches == [["boom", "x", "y"], ["boom"], ["y"]]
