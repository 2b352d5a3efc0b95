"""The batch job's graph stage without Ray: inline (fused) models, parity with the in-process executor.

The stage's only remote peer is the job's state actor (caches, feedback, counters); here a
stand-in answers its ``.remote`` calls in-process, so the stage runs exactly the code it
runs inside a Ray Data actor, minus the transport.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from fake_actor import InProcessActor

from modelweave.batch import BatchJob, run_batch
from modelweave.batch.job import _inline_set
from modelweave.batch.rows import result_row
from modelweave.batch.shared import JobState
from modelweave.batch.stage import GraphStage
from modelweave.checker import check_graph
from modelweave.codecs import message_from_text
from modelweave.executor import Executor
from modelweave.local import LocalCaller
from modelweave.spec import DeploymentSettings, GraphSpec, dump_graph, load_graph


def _texts(n: int) -> list[str]:
    rng = random.Random(5)
    pool = ["I love this, great and fast service", "the parcel is broken and late, I want a refund",
            "where is my order", "not good at all, really disappointed", "good but late", "the item was ok",
            "Le colis est arrivé en retard, je suis très déçu", "El producto es muy bueno, gracias"]
    return [f"{rng.choice(pool)} ref{i % 40}" for i in range(n)]  # repeats: the cache node hits


@pytest.fixture
def demo(demo_path: Path) -> GraphSpec:
    """The demo graph without feedback, so results do not depend on the order rows run in."""
    data = load_graph(demo_path).model_dump(mode="json")
    for step in data["flow"]["steps"]:
        if step["name"] == "reply":
            step["feedback"] = []
    return GraphSpec.model_validate(data)


def test_a_graph_of_rules_runs_fused_in_the_stage_by_default(demo: GraphSpec) -> None:
    # Every demo model is a non-blocking rule: the default inline policy leaves none in a pool.
    graph = check_graph(demo)
    assert _inline_set(graph, "cheap") == set(graph.models)
    for fn in (BatchJob.__init__, run_batch):
        assert inspect.signature(fn).parameters["inline"].default == "cheap"


@pytest.mark.skipif("inline" not in DeploymentSettings.model_fields, reason="no deployment.inline setting")
def test_deployment_inline_false_keeps_a_model_in_its_pool(demo: GraphSpec) -> None:
    data = demo.model_dump(mode="json")
    data["flow"]["steps"][0]["deployment"] = {"inline": False}  # normalise
    graph = check_graph(GraphSpec.model_validate(data))
    assert _inline_set(graph, "cheap") == set(graph.models) - {"normalise"}


@pytest.mark.parametrize("columnar", [True, False])
def test_fused_stage_equals_the_in_process_executor_row_by_row(demo: GraphSpec, columnar: bool) -> None:
    texts = [*_texts(150), ""]
    graph = check_graph(demo)
    stage = GraphStage(graph=dump_graph(demo), pools={}, batch_sizes={}, state_actor=InProcessActor(JobState()),
                       inline=sorted(graph.models), columnar=columnar)
    assert (stage.columnar is not None) == columnar
    rows: list[dict[str, Any]] = []
    for start in range(0, len(texts), 32):
        chunk = texts[start:start + 32]
        rows.extend(stage(pa.table({"text": chunk})).to_pylist())

    executor = Executor(graph, LocalCaller(graph))

    async def reference() -> list[dict[str, Any] | str]:
        out: list[dict[str, Any] | str] = []
        for text in texts:
            try:
                out.append(result_row(await executor.run(message_from_text(text))))
            except Exception as exc:
                out.append(type(exc).__name__)
        return out

    expected = asyncio.run(reference())
    assert len(rows) == len(expected)
    for i, (got, ref) in enumerate(zip(rows, expected, strict=True)):
        if isinstance(ref, str):
            assert got["error"] is not None, i
            continue
        assert got["error"] is None, (i, got["error"])
        assert json.loads(got["result_json"]) == json.loads(ref["result_json"]), i
        assert (got["route"], got["attempts"], got["verdict"]) == (ref["route"], ref["attempts"], ref["verdict"]), i
        assert got["cache_hit"] == ref["cache_hit"], i  # the first of a repeated text computes, the rest hit
    assert sum(bool(r["cache_hit"]) for r in rows) > 0  # repeats were answered from the shared cache


def test_default_concurrency_gives_stages_that_run_models_more_stages() -> None:
    from modelweave.batch.job import default_concurrency

    assert default_concurrency(4, stages_run_models=True) == 2  # the CLI's local Ray on 2 cores: both cores busy
    assert default_concurrency(4, stages_run_models=False) == 1  # rules only in the stages: the pools do the work
    assert default_concurrency(16, stages_run_models=False) == 4
    assert default_concurrency(1, stages_run_models=True) == default_concurrency(2, stages_run_models=False) == 1


def test_stages_run_models_when_a_blocking_model_is_inline(demo: GraphSpec) -> None:
    from modelweave.batch.pools import blocking_models

    data = demo.model_dump(mode="json")
    data["flow"]["steps"].append({"kind": "model", "name": "slow", "impl": "fakes:Sleep", "params": {"seconds": 0.0},
                                  "deployment": {"inline": True}})
    graph = check_graph(GraphSpec.model_validate(data))
    assert blocking_models(graph, graph.models) == {"slow"}
    assert blocking_models(graph, _inline_set(graph, "cheap")) == {"slow"}  # inline: true puts it in the stages
    assert blocking_models(graph, set(graph.models) - {"slow"}) == set()
