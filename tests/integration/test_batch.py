"""Batch jobs on Ray Data: files in and out, per-row errors, parity with the in-process
executor, per-branch micro-batching and cache dedupe within a job.

The demo graph's model pools start once for the module and are shared by its jobs
(each job still gets its own cache and feedback state).
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import random
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from modelweave.batch import BatchJob, read_input, write_output
from modelweave.batch.io import expand_glob, format_of, normalise_format
from modelweave.batch.pools import PoolPlan, fit_plans
from modelweave.batch.rows import RESULT_FIELDS, error_text, result_row
from modelweave.checker import check_graph
from modelweave.codecs import message_from_text
from modelweave.errors import InvalidArgument, ModelweaveError, ResourceExhausted
from modelweave.executor import Executor
from modelweave.local import LocalCaller
from modelweave.spec import GraphSpec, load_graph

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = pathlib.Path(__file__).resolve().parents[2]
RESULT_COLUMNS = [name for name, _ in RESULT_FIELDS]

_EN = ["I love this, great and fast service", "the parcel is broken and late, I want a refund",
       "where is my order", "not good at all, really disappointed", "thanks, it works perfectly",
       "terrible support and a slow answer", "the item was ok", "good but late"]
_OTHER = ["Le colis est arrivé en retard, je suis très déçu", "Merci, le produit est super et parfait",
          "El producto es muy bueno, gracias", "Mi pedido llegó roto y tarde, es un problema",
          "Das ist sehr gut, danke", "Mein Paket ist kaputt und sehr spät"]


def make_texts(n: int, *, seed: int = 7, distinct: int | None = None) -> list[str]:
    """English and other-language texts; unique (a ref suffix) unless ``distinct`` caps them."""
    rng = random.Random(seed)
    pool = _EN * 2 + _OTHER  # about 70 % English
    texts = [f"{rng.choice(pool)} ref{i}" for i in range(distinct or n)]
    return texts if distinct is None else [texts[i % distinct] for i in range(n)]


def without_feedback(spec: GraphSpec) -> GraphSpec:
    """The demo graph with its adaptive threshold frozen (results no longer depend on row order)."""
    data = spec.model_dump(mode="json")
    for step in data["flow"]["steps"]:
        if step["name"] == "reply":
            step["feedback"] = []
    return GraphSpec.model_validate(data)


def in_process(spec: GraphSpec, texts: list[str]) -> list[dict[str, Any]]:
    """The reference: the same executor over in-process adapters, one row at a time."""
    graph = check_graph(spec)
    executor = Executor(graph, LocalCaller(graph))

    async def run() -> list[dict[str, Any]]:
        rows = []
        for text in texts:
            try:
                rows.append(result_row(await executor.run(message_from_text(text))))
            except ModelweaveError as exc:
                rows.append({"error": error_text(exc)})
        return rows

    return asyncio.run(run())


@pytest.fixture(scope="module")
def demo() -> GraphSpec:
    return load_graph(REPO / "examples" / "demo.yaml")


@pytest.fixture(scope="module")
def pools_job(ray_cluster: None, demo: GraphSpec) -> Iterator[BatchJob]:
    """Owns the demo graph's model pools for the module (a pool per model node, not the default inline)."""
    job = BatchJob(demo, batch_size=64, inline="none")
    yield job
    job.shutdown()


def run_job(spec: GraphSpec, owner: BatchJob, dataset: Any, **kw: Any) -> tuple[list[dict[str, Any]], BatchJob]:
    job = BatchJob(spec, pools=owner.pools, concurrency=kw.pop("concurrency", None), inline="none")
    try:
        rows = job.run(dataset, **kw).take_all()
    except BaseException:
        job.shutdown()
        raise
    return rows, job


def test_files_in_every_format_keep_columns_and_add_results(pools_job: BatchJob, demo: GraphSpec,
                                                            tmp_path: pathlib.Path) -> None:
    texts = make_texts(300, seed=1)
    texts[5] = ""  # an empty text fails its row, not the job
    table = pa.table({"id": list(range(300)), "text": texts, "customer": [f"c{i % 7}" for i in range(300)]})
    pq.write_table(table, tmp_path / "in.parquet")
    pacsv.write_csv(table, tmp_path / "in.csv")
    with open(tmp_path / "in.jsonl", "w", encoding="utf-8") as f:
        for row in table.to_pylist():
            f.write(json.dumps(row) + "\n")

    for name in ("in.parquet", "in.csv", "in.jsonl"):
        fmt = format_of(name)
        out = tmp_path / f"out-{fmt}"
        job = BatchJob(demo, pools=pools_job.pools, inline="none")
        try:
            write_output(job.run(read_input(str(tmp_path / name))), str(out), fmt)
            summary = job.summary()
        finally:
            job.shutdown()
        files = sorted(p for p in out.iterdir() if p.is_file())
        assert files, f"{name}: nothing written"
        if fmt == "parquet":
            tables = [pq.read_table(p) for p in files]
        elif fmt == "csv":
            convert = pacsv.ConvertOptions(strings_can_be_null=True)
            tables = [pacsv.read_csv(p, convert_options=convert) for p in files]
        else:
            tables = [pajson.read_json(p) for p in files]
        rows = sorted((r for t in tables for r in t.to_pylist()), key=lambda r: r["id"])
        columns = tables[0].column_names
        assert len(rows) == 300, name
        assert columns[:3] == ["id", "text", "customer"], name
        assert set(RESULT_COLUMNS) <= set(columns), name
        by_id = {r["id"]: r for r in rows}
        assert [by_id[i]["customer"] for i in range(300)] == table.column("customer").to_pylist()
        failed = by_id[5]
        assert failed["error"] == "INVALID_ARGUMENT: input.text.content must not be empty", name
        assert failed["label"] is None and failed["result_json"] is None
        ok = [r for r in rows if r["id"] != 5]
        assert all(r["error"] is None and r["label"] and r["generation"] and r["route"] for r in ok), name
        assert summary.rows == 300 and summary.failures == 1 and summary.errors == {"INVALID_ARGUMENT": 1}
        assert sum(summary.routes.values()) == 299


def test_bad_rows_get_typed_errors_and_the_job_goes_on(ray_cluster: None, pools_job: BatchJob,
                                                       demo: GraphSpec) -> None:
    import ray

    texts = ["Great service, thanks!", "", None, "x" * (demo.limits.max_text_chars + 1), "broken and late"]
    rows, job = run_job(demo, pools_job, ray.data.from_items([{"n": i, "text": t} for i, t in enumerate(texts)]))
    job.shutdown()
    by_n = {r["n"]: r for r in rows}
    assert by_n[0]["error"] is None and by_n[0]["label"] == "positive"
    assert by_n[1]["error"] == by_n[2]["error"] == "INVALID_ARGUMENT: input.text.content must not be empty"
    assert by_n[3]["error"].startswith("INVALID_ARGUMENT: input.text.content has 20001 characters")
    assert by_n[4]["error"] is None and by_n[4]["label"] == "negative"
    assert "sorry" in by_n[4]["generation"].lower() and by_n[4]["attempts"] == 2


def test_batch_results_equal_the_in_process_executor_row_by_row(ray_cluster: None, pools_job: BatchJob,
                                                               demo: GraphSpec) -> None:
    """Same semantics: every row's full result equals a sequential in-process run of the same graph."""
    import ray

    spec = without_feedback(demo)
    texts = make_texts(240, seed=2) + [""]
    before = pools_job.pools.stats()
    rows, job = run_job(spec, pools_job, ray.data.from_items([{"i": i, "text": t} for i, t in enumerate(texts)]))
    job.shutdown()
    after = pools_job.pools.stats()
    reference = in_process(spec, texts)
    by_i = {r["i"]: r for r in rows}
    for i, ref in enumerate(reference):
        got = by_i[i]
        if "error" in ref and ref["error"] is not None:
            assert got["error"] == ref["error"]
            continue
        for column in ("label", "confidence", "generation", "verdict_passed", "language", "route", "attempts",
                       "verdict", "cache_hit"):
            assert got[column] == ref[column], (i, column, got[column], ref[column])
        assert json.loads(got["result_json"]) == json.loads(ref["result_json"]), i
    routes = [by_i[i]["route"] for i in range(len(texts) - 1)]
    assert any("confidence=escalate" in r for r in routes) and any("by-language=other" in r for r in routes)

    # Rows of one Ray Data batch took different branches; each branch's models saw only their rows.
    seen = {name: after[name]["rows"] - before[name]["rows"] for name in after}
    calls = {name: after[name]["calls"] - before[name]["calls"] for name in after}
    assert seen["normalise"] == seen["language"] == len(texts) - 1
    assert seen["multilingual"] == sum(r == "by-language=other" for r in routes)
    assert seen["cheap"] == sum(r.startswith("by-language=english") for r in routes)
    escalated = sum("confidence=escalate" in r for r in routes)
    assert seen["negation-aware"] == seen["second-opinion"] == escalated > 0
    assert seen["responder"] == sum(min(by_i[i]["attempts"], 2) for i in range(len(texts) - 1))
    # ... and the models got real batches, not one call per row.
    assert calls["normalise"] < seen["normalise"] / 4
    assert calls["cheap"] < seen["cheap"] / 2


def test_inline_cheap_models_give_the_same_results_without_pools(ray_cluster: None, demo: GraphSpec) -> None:
    import ray

    spec = without_feedback(demo)
    texts = make_texts(120, seed=4)
    job = BatchJob(spec)  # inline="cheap" is the default
    try:
        assert job.inline == set(check_graph(spec).models) and job.pools.actors == {}
        rows = job.run(ray.data.from_items([{"i": i, "text": t} for i, t in enumerate(texts)])).take_all()
    finally:
        job.shutdown()
    by_i = {r["i"]: r for r in rows}
    for i, ref in enumerate(in_process(spec, texts)):
        assert json.loads(by_i[i]["result_json"]) == json.loads(ref["result_json"]), i
        assert by_i[i]["route"] == ref["route"], i


def test_several_stages_share_an_input_of_one_block(ray_cluster: None) -> None:
    """A small file is one Ray Data block; with several stages each must still get rows."""
    import ray

    spec = GraphSpec.model_validate({
        "name": "who", "input": ["Text"], "output": ["Classification"],
        "flow": {"kind": "model", "name": "who", "impl": "slow_models:ProcessLabel"}})
    table = pa.table({"i": list(range(3000)), "text": [f"row {i}" for i in range(3000)]})
    dataset = ray.data.from_arrow(table)
    assert dataset.materialize().num_blocks() == 1
    job = BatchJob(spec, batch_size=64, concurrency=2, inline=["who"])
    try:
        rows = job.run(dataset).take_all()
    finally:
        job.shutdown()
    assert sorted(r["i"] for r in rows) == list(range(3000))
    assert all(r["error"] is None for r in rows)
    per_stage: dict[str, int] = {}
    for r in rows:
        per_stage[r["label"]] = per_stage.get(r["label"], 0) + 1
    assert len(per_stage) == 2, per_stage  # 12 blocks of 256 rows went to both stages


def test_a_batch_slower_than_the_row_deadline_runs_in_chunks_and_no_row_fails(ray_cluster: None) -> None:
    """600 rows at 4 ms each, one Ray Data batch: walked at once 2.4 s, past the graph's 1 s deadline."""
    import ray

    spec = GraphSpec.model_validate({
        "name": "slow-rows", "timeout_s": 1.0, "input": ["Text"], "output": ["Classification"],
        "flow": {"kind": "model", "name": "slow", "impl": "slow_models:PerRowSlow", "params": {"seconds": 0.004}}})
    table = pa.table({"i": list(range(600)), "text": [f"row {i}" for i in range(600)]})
    job = BatchJob(spec, batch_size=600, concurrency=1, inline=["slow"])
    try:
        rows = job.run(ray.data.from_arrow(table)).take_all()
        summary = job.summary()
    finally:
        job.shutdown()
    assert sorted(r["i"] for r in rows) == list(range(600))
    assert [r["error"] for r in rows if r["error"]] == []
    assert summary.rows == 600 and summary.failures == 0


def test_duplicates_in_a_job_hit_the_shared_cache(ray_cluster: None, pools_job: BatchJob, demo: GraphSpec) -> None:
    import ray

    texts = make_texts(200, seed=3, distinct=10)
    before = pools_job.pools.stats()
    rows, job = run_job(demo, pools_job, ray.data.from_items([{"text": t} for t in texts]), concurrency=1)
    try:
        stats = job.cache_stats()["caches"]["demo/main/sentiment-cache"]
        summary = job.summary()
    finally:
        job.shutdown()
    after = pools_job.pools.stats()
    assert all(r["error"] is None for r in rows)
    # Each distinct text missed once in the job's shared cache; repeats were answered by the
    # stage's local copy or the shared cache (the actor counts only lookups that reach it).
    assert stats["misses"] == 10 and stats["size"] == 10 and stats["hits"] < 190
    assert sum(r["cache_hit"] for r in rows) == 190 == summary.cache_hits
    sentiment_rows = sum(after[m]["rows"] - before[m]["rows"] for m in ("cheap", "multilingual"))
    assert sentiment_rows == 10  # the routed sentiment sub-flow ran once per distinct text
    labels: dict[str, set[str]] = {}
    for r in rows:
        labels.setdefault(r["text"], set()).add(r["label"])
    assert all(len(v) == 1 for v in labels.values())


def test_cli_batch_command(ray_cluster: None, tmp_path: pathlib.Path) -> None:
    from modelweave.cli import main

    graph = tmp_path / "tiny.yaml"
    graph.write_text(
        "name: tiny\ninput: [Text]\nflow:\n  kind: chain\n  name: main\n  steps:\n"
        "    - {kind: model, name: normalise, impl: 'modelweave.examples.rules:Normaliser'}\n"
        "    - {kind: model, name: sentiment, impl: 'modelweave.examples.rules:LexiconSentiment'}\n",
        encoding="utf-8")
    pacsv.write_csv(pa.table({"body": ["great, thanks", "broken", ""]}), tmp_path / "in.csv")
    out = tmp_path / "out.jsonl"
    args = ["batch", str(graph), "--input", str(tmp_path / "in.csv"), "--output", str(out),
            "--text-column", "body", "--prefix", "mw_", "--inline", "cheap"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "rows: 3  failures: 1" in result.output
    rows = [json.loads(line) for p in sorted(out.iterdir()) for line in p.read_text().splitlines()]
    assert sorted((r["body"], r["mw_label"], r["mw_error"]) for r in rows) == [
        ("", None, "INVALID_ARGUMENT: input.text.content must not be empty"),
        ("broken", "negative", None), ("great, thanks", "positive", None)]
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "already exists" in again.output
    assert "columnar" in result.output  # the log line says how the stages run
    rowwise = tmp_path / "rowwise.jsonl"
    by_row = CliRunner().invoke(main, [*args[:5], str(rowwise), *args[6:], "--row-by-row"])
    assert by_row.exit_code == 0 and "row by row: asked for" in by_row.output, by_row.output
    same = [json.loads(line) for p in sorted(rowwise.iterdir()) for line in p.read_text().splitlines()]
    assert sorted((r["body"], r["mw_label"], r["mw_error"]) for r in same) == sorted(
        (r["body"], r["mw_label"], r["mw_error"]) for r in rows)


def test_a_csv_text_column_that_looks_like_numbers_reaches_the_model_as_written(ray_cluster: None,
                                                                                tmp_path: pathlib.Path) -> None:
    from modelweave.cli import main

    graph = tmp_path / "echo.yaml"
    graph.write_text(
        "name: echo\ninput: [Text]\nflow: {kind: model, name: echo, impl: 'slow_models:text_as_label',\n"
        "  params: {produces: Classification}}\n", encoding="utf-8")
    # Arrow infers this column as numbers: 007 would become 7 and 1.50 would become 1.5.
    (tmp_path / "in.csv").write_text("text,id\n007,1\n1.50,2\n1e3,3\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["batch", str(graph), "--input", str(tmp_path / "in.csv"),
                                       "--output", str(out), "--inline", "cheap"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for p in sorted(out.iterdir()) for line in p.read_text().splitlines()]
    assert sorted((r["id"], r["label"]) for r in rows) == [(1, "007"), (2, "1.50"), (3, "1e3")]


# -- planning and paths (no Ray needed) ----------------------------------------------------


def _plan(name: str, cpus: float, *, explicit: bool = False, size: int = 1, gpus: float = 0.0) -> PoolPlan:
    return PoolPlan(name=name, size=size, num_cpus=cpus, num_gpus=gpus, batch_size=64, explicit_cpus=explicit)


def test_pool_plans_leave_a_whole_cpu_for_ray_data() -> None:
    plans = [_plan(f"m{i}", 0.1) for i in range(10)] + [_plan("big", 0.1, size=2)]
    fitted = fit_plans(plans, available_cpus=2.0, available_gpus=0.0, stage_cpus=0.25)
    assert sum(p.total_cpus for p in fitted) <= 0.75 and all(p.num_cpus > 0 for p in fitted)
    assert fit_plans(plans, available_cpus=8.0, available_gpus=0.0, stage_cpus=0.5) == plans
    explicit = [_plan("a", 0.5, explicit=True), _plan("b", 0.5)]
    fitted = fit_plans(explicit, available_cpus=2.0, available_gpus=0.0, stage_cpus=0.25)
    assert fitted[0].num_cpus == 0.5 and fitted[1].num_cpus == 0.25
    with pytest.raises(ResourceExhausted, match="batch.num_cpus"):
        fit_plans([_plan("a", 1.0, explicit=True)], available_cpus=2.0, available_gpus=0.0, stage_cpus=0.25)
    with pytest.raises(ResourceExhausted, match="GPUs"):
        fit_plans([_plan("a", 0.1, gpus=1.0)], available_cpus=8.0, available_gpus=0.0, stage_cpus=0.25)


def test_formats_and_globs(tmp_path: pathlib.Path) -> None:
    assert format_of("a/b/data.parquet") == "parquet" and format_of("x.jsonl.gz") == "json"
    assert format_of("s3://bucket/part.csv") == "csv" and format_of("folder") is None
    assert normalise_format("ndjson") == "json"
    with pytest.raises(InvalidArgument, match="unknown format"):
        normalise_format("xlsx")
    (tmp_path / "sub").mkdir()
    for rel in ("a.csv", "b.csv", "c.json", "sub/d.csv", "_SUCCESS"):
        (tmp_path / rel).write_text("text\nx\n")
    _, files = expand_glob(str(tmp_path / "*.csv"))
    assert [pathlib.Path(f).name for f in files] == ["a.csv", "b.csv"]
    _, files = expand_glob(str(tmp_path / "**" / "*.csv"))
    assert [pathlib.Path(f).name for f in files] == ["d.csv"]
    with pytest.raises(InvalidArgument, match="no files match"):
        expand_glob(str(tmp_path / "*.parquet"))
