"""A graph whose input is not text, as a batch job and in `eval`: the digits cascade.

Three real scikit-learn models behind the generic ``SklearnClassifier`` take the 64 pixels
of each digit as an ``Embedding``; the input is a Parquet file with a ``list<float>``
column. Issue 10 saw every row fail (597 x INVALID_ARGUMENT) because batch jobs only fed
``Text``. Both runs go through the CLI on the session's Ray.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from digits import build, held_out

from modelweave.batch.inputs import InputMapping, messages_from_table
from modelweave.batch.rows import result_row
from modelweave.checker import check_graph
from modelweave.executor import Executor
from modelweave.local import LocalCaller
from modelweave.spec import load_graph
from modelweave.v1 import messages_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROWS = 300


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, pathlib.Path]:
    """The graph (models trained into a temp folder) and a Parquet file of held-out digits."""
    d = tmp_path_factory.mktemp("digits")
    data = d / "digits.parquet"
    pq.write_table(held_out(ROWS), data)
    return build(d), data


def local_reference(graph_path: pathlib.Path, data: pathlib.Path) -> list[dict[str, Any]]:
    """The same graph through the executor in this process, one row at a time."""
    graph = check_graph(load_graph(graph_path))
    executor = Executor(graph, LocalCaller(graph))
    messages = messages_from_table(pq.read_table(data), InputMapping(embedding="pixels"))

    async def run() -> list[dict[str, Any]]:
        rows = []
        for message in messages:
            assert isinstance(message, pb.Message)
            rows.append(result_row(await executor.run(message)))
        return rows

    return asyncio.run(run())


def test_digits_cascade_batch_equals_the_local_runner_row_by_row(
        ray_cluster: None, digits: tuple[pathlib.Path, pathlib.Path], tmp_path: pathlib.Path) -> None:
    from modelweave.cli import main

    graph, data = digits
    out = tmp_path / "out.parquet"
    # The mapping (Embedding <- pixels) is derived from the graph's `input: [Embedding]` and the schema.
    result = CliRunner().invoke(main, ["batch", str(graph), "--input", str(data), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "input Embedding<-pixels" in result.output and f"rows: {ROWS}  failures: 0" in result.output
    rows = sorted(pq.read_table(out).to_pylist(), key=lambda r: r["id"])
    reference = local_reference(graph, data)
    assert len(rows) == len(reference) == ROWS
    for got, ref in zip(rows, reference, strict=True):
        assert got["error"] is None
        for column in ("label", "confidence", "route", "attempts"):
            assert got[column] == ref[column], (got["id"], column)
        assert json.loads(got["result_json"]) == json.loads(ref["result_json"]), got["id"]
    escalated = sum(r["route"] == "confidence=escalate" for r in rows)
    accuracy = sum(r["label"] == str(r["digit"]) for r in rows) / ROWS
    assert 0.2 < escalated / ROWS < 0.6  # measured 0.41: the cascade really routes
    assert accuracy > 0.88  # measured 0.92 (the tree alone: 0.75)


def test_eval_loads_embeddings_and_batch_equals_local(
        ray_cluster: None, digits: tuple[pathlib.Path, pathlib.Path], tmp_path: pathlib.Path) -> None:
    from modelweave.cli import main

    graph, data = digits
    reports = {}
    for runner in ("local", "batch"):
        path = tmp_path / f"{runner}.json"
        result = CliRunner().invoke(main, ["eval", str(graph), "--data", str(data), "--label-column", "digit",
                                           "--column", "Embedding=pixels", "--runner", runner, "--json", str(path)])
        assert result.exit_code == 0, result.output
        reports[runner] = json.loads(path.read_text())[0]
    local, batch = reports["local"], reports["batch"]
    assert local["rows"] == batch["rows"] == ROWS and local["errors"] == batch["errors"] == 0
    assert local["accuracy"] == batch["accuracy"] > 0.88
    assert local["reach"] == batch["reach"]
