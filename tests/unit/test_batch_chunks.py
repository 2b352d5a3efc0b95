"""A graph stage walks a slow batch in chunks so the row deadline measures a chunk, not the batch."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from fake_actor import InProcessActor
from fakes import graph

from modelweave.batch.chunks import DEADLINE_SHARE, FIRST_CHUNK_ROWS, GROWTH, DeadlineChunks
from modelweave.batch.shared import JobState
from modelweave.batch.stage import GraphStage
from modelweave.checker import check_graph
from modelweave.spec import parse_graph

pytestmark = pytest.mark.timeout(60)


def test_the_first_chunk_is_small_and_fast_graphs_grow_to_whole_batches() -> None:
    chunks = DeadlineChunks(20.0)
    assert chunks.next_size(1024) == FIRST_CHUNK_ROWS
    chunks.observe(FIRST_CHUNK_ROWS, 0.001)  # 16 us a row: a 1,024-row batch is far inside the budget
    assert chunks.next_size(1024) == FIRST_CHUNK_ROWS * GROWTH  # growth is bounded per step
    chunks.observe(FIRST_CHUNK_ROWS * GROWTH, 0.004)
    assert chunks.next_size(1024) == 1024
    assert chunks.next_size(7) == 7  # never more than what is left


def test_a_slow_graph_settles_at_a_quarter_of_the_budget() -> None:
    chunks = DeadlineChunks(20.0)
    chunks.observe(FIRST_CHUNK_ROWS, FIRST_CHUNK_ROWS * 0.012)  # 12 ms a row (triage, two stages on 2 cores)
    assert chunks.next_size(1024) == FIRST_CHUNK_ROWS * GROWTH
    chunks.observe(FIRST_CHUNK_ROWS * GROWTH, FIRST_CHUNK_ROWS * GROWTH * 0.012)
    assert chunks.next_size(1024) in (415, 416)  # 20 s x 1/4 at 12 ms a row: ~5 s
    chunks.observe(416, 416 * 0.050)  # the rate dropped to 50 ms a row: shrink at once
    assert chunks.next_size(1024) in (99, 100)
    chunks.observe(100, 100 * 10.0)  # a hung model: still at least one row
    assert chunks.next_size(1024) == 1


def test_a_short_tail_does_not_grow_the_next_chunk() -> None:
    chunks = DeadlineChunks(20.0, first=256)
    chunks.observe(10, 0.0001)  # a batch's last 10 rows: fast, but says little about 1,024
    assert chunks.next_size(4096) == 256
    chunks.observe(0, 1.0)  # nothing walked: nothing learned
    assert chunks.next_size(4096) == 256


def test_the_budget_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DeadlineChunks(0.0)


def _slow_stage(columnar: bool, *, first: int, timeout_s: float = 1.0) -> GraphStage:
    spec = graph({"kind": "chain", "name": "main", "steps": [
        {"kind": "model", "name": "slow", "impl": "columnar_fakes:PerRowSleep", "params": {"seconds": 0.005}}]})
    checked = check_graph(parse_graph(spec))
    stage = GraphStage(graph=spec, pools={}, batch_sizes={}, state_actor=InProcessActor(JobState()),
                       inline=sorted(checked.models), columnar=columnar, timeout_s=timeout_s)
    stage.chunks = DeadlineChunks(timeout_s, first=first)
    return stage


def _adapter(stage: GraphStage) -> Any:
    inline = stage.executor.caller._inline  # type: ignore[attr-defined]
    return inline.adapters["slow"]


@pytest.mark.parametrize("columnar", [True, False])
def test_a_batch_slower_than_the_deadline_is_walked_in_chunks_and_no_row_fails(columnar: bool) -> None:
    # 400 rows at 5 ms each take 2 s, twice the 1 s deadline. Walked at once, rows fail: every
    # row when columnar, the later half row by row (the first stage); in chunks sized from the
    # measured rate, none does.
    whole = _slow_stage(columnar, first=400)
    errors = [r["error"] for r in whole(pa.table({"text": [f"row {i}" for i in range(400)]})).to_pylist()]
    assert {e.split(":")[0] for e in errors if e} == {"DEADLINE_EXCEEDED"}
    assert sum(e is not None for e in errors) >= (400 if columnar else 100)

    stage = _slow_stage(columnar, first=32)
    rows = stage(pa.table({"text": [f"row {i}" for i in range(400)]})).to_pylist()
    assert [r["error"] for r in rows] == [None] * 400
    assert [r["text"] for r in rows] == [f"row {i}" for i in range(400)]  # every row once, in order
    if columnar:  # one predict per chunk: the first of 32, then ~50 (a quarter of 1 s at 5 ms a row)
        sizes = _adapter(stage).batches
        assert sizes[0] == 32 and sum(sizes) == 400
        assert max(sizes) <= 1.0 * DEADLINE_SHARE / 0.005 * 1.2
    assert stage.chunks.per_row_s is not None and stage.chunks.per_row_s >= 0.004
