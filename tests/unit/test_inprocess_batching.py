"""In-process dynamic batching of inline nodes and shared adapters (pure asyncio, no Ray)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from modelweave.adapters.base import ModelAdapter, load_shared
from modelweave.errors import DeadlineExceeded, ModelError
from modelweave.executor import ModelReply
from modelweave.inprocess_batching import InProcessBatcher
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
