"""``modelweave eval``: compare graph versions on the same labelled data.

For each version it reports quality (accuracy and macro-F1 of a label against a
reference column), latency p50/p99, model CPU per request, modelled cost, the
fraction of requests reaching each model node, and, with ablations, each node's
contribution (the change when it is removed). Output: a Markdown table and a PNG of
quality against compute with the Pareto frontier drawn.

Rows run through the batch path (:mod:`modelweave.batch`, the same executor as online
serving) or, with ``runner="local"``, through the executor in this process. Inputs are
texts, or a table whose columns map to the graph's input parts
(:mod:`modelweave.batch.inputs`: text, embedding, tensor or whole-message columns); the
predicted value is any envelope field (``classification.label`` by default).
"""

from __future__ import annotations

import asyncio
import math
import pathlib
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from google.protobuf import json_format

from modelweave import eval_stats
from modelweave.batch.inputs import ColumnChoice, messages_from_table
from modelweave.checker import CheckedGraph, check_graph
from modelweave.codecs import message_from_text
from modelweave.messages import clone
from modelweave.spec import GraphSpec, ModelNode
from modelweave.v1 import messages_pb2 as pb


@dataclass(frozen=True)
class TableInputs:
    """Evaluation inputs as a table: its columns map to each version's input parts.

    Attributes:
        table: The input columns (the label column left out).
        choice: The user's column choices (``--column``, ``--text-column``, ``--message-column``).
    """

    table: pa.Table
    choice: ColumnChoice = ColumnChoice()

    def messages(self, graph: CheckedGraph) -> list[pb.Message | Exception]:
        """One input envelope per row for ``graph`` (or the row's conversion error)."""
        mapping = self.choice.derive(self.table.schema, graph)
        return list(messages_from_table(self.table, mapping, max_json_depth=graph.spec.limits.max_json_depth))


#: What :func:`evaluate` takes as inputs: texts or a table of input columns.
Inputs = Sequence[str] | TableInputs


@dataclass
class RowOutcome:
    """What one row produced."""

    truth: str
    predicted: str | None
    trace: pb.Trace | None
    error: str | None = None


@dataclass
class VersionReport:
    """Figures of one graph version over the evaluation rows.

    ``correct`` (per row, whether the prediction was right) pairs versions row by row in
    :func:`comparisons`; it stays out of the JSON (:func:`as_dict`), which must not grow with the rows.
    """

    name: str
    rows: int
    accuracy: float
    macro_f1: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float
    cost: float
    errors: int
    reach: dict[str, float] = field(default_factory=dict)
    node_ms: dict[str, float] = field(default_factory=dict)
    node_share: dict[str, float] = field(default_factory=dict)
    removed: str = ""
    correct: list[bool] = field(default_factory=list, repr=False)


def macro_f1(truth: Sequence[str], predicted: Sequence[str | None]) -> float:
    """Unweighted mean F1 over the labels present in ``truth``."""
    labels = sorted(set(truth))
    scores = []
    for label in labels:
        tp = sum(1 for t, p in zip(truth, predicted, strict=True) if t == label and p == label)
        fp = sum(1 for t, p in zip(truth, predicted, strict=True) if t != label and p == label)
        fn = sum(1 for t, p in zip(truth, predicted, strict=True) if t == label and p != label)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[k]


def summarise(name: str, graph: CheckedGraph, outcomes: Sequence[RowOutcome], removed: str = "") -> VersionReport:
    """Turns per-row outcomes into a :class:`VersionReport`."""
    costs = {path: info.node.cost for path, info in graph.nodes.items() if isinstance(info.node, ModelNode)}
    truth = [o.truth for o in outcomes]
    predicted = [o.predicted for o in outcomes]
    correct = eval_stats.correctness(truth, predicted)
    latencies, cpu, cost = [], 0.0, 0.0
    reach: Counter[str] = Counter()
    node_total_ms: dict[str, float] = defaultdict(float)
    node_calls: Counter[str] = Counter()
    node_rows: Counter[str] = Counter()
    for o in outcomes:
        if o.trace is None:
            continue
        latencies.append(o.trace.total_ms)
        node_rows.update({span.node for span in o.trace.spans})
        seen = set()
        for span in o.trace.spans:
            node_total_ms[span.node] += span.latency_ms
            node_calls[span.node] += 1
            if span.kind != "model" or span.error:
                continue
            cpu += span.cpu_ms
            cost += costs.get(span.node, 0.0)
            seen.add(span.node)
        reach.update(seen)
    n = max(1, len(outcomes))
    return VersionReport(
        name=name, rows=len(outcomes),
        accuracy=sum(correct) / n,
        macro_f1=macro_f1(truth, predicted),
        p50_ms=_percentile(latencies, 0.5), p99_ms=_percentile(latencies, 0.99),
        cpu_ms=cpu / n, cost=cost / n, errors=sum(1 for o in outcomes if o.error),
        reach={node: count / n for node, count in sorted(reach.items())},
        node_ms={node: node_total_ms[node] / node_calls[node] for node in sorted(node_calls)},
        node_share={node: count / n for node, count in sorted(node_rows.items())}, removed=removed,
        correct=correct,
    )


def _predicted(message: pb.Message, label_field: str) -> str | None:
    from modelweave.conditions import read_field

    value = read_field(message, label_field)
    return str(value) if value is not None else None


def run_local(graph: CheckedGraph, texts: Inputs, truths: Sequence[str], *, concurrency: int = 8,
              label_field: str = "classification.label") -> list[RowOutcome]:
    """Runs rows through the executor in this process (models loaded here)."""
    from modelweave.errors import ModelweaveError
    from modelweave.executor import Executor
    from modelweave.local import LocalCaller

    executor = Executor(graph, LocalCaller(graph))
    inputs: list[pb.Message | Exception] = (texts.messages(graph) if isinstance(texts, TableInputs)
                                            else [message_from_text(t) for t in texts])
    outcomes: list[RowOutcome | None] = [None] * len(inputs)

    async def one(i: int, sem: asyncio.Semaphore) -> None:
        async with sem:
            try:
                message = inputs[i]
                if isinstance(message, Exception):  # the row's columns did not convert
                    raise message
                result = await executor.run(clone(message))  # versions share the inputs; runs edit theirs
                outcomes[i] = RowOutcome(truths[i], _predicted(result.message, label_field), result.trace)
            except ModelweaveError as exc:
                outcomes[i] = RowOutcome(truths[i], None, exc.trace, f"{exc.status.value}: {exc}")

    async def main() -> None:
        sem = asyncio.Semaphore(concurrency)
        await asyncio.gather(*(one(i, sem) for i in range(len(inputs))))

    asyncio.run(main())
    return [o for o in outcomes if o is not None]


def outcome_from_row(row: dict[str, Any], truth: str, label_field: str = "classification.label") -> RowOutcome:
    """A batch output row (with ``trace_json``) as a :class:`RowOutcome`.

    The predicted value is read from the full result message (``result_json``), so any
    envelope field compares, not only the ``label`` column.
    """
    trace = json_format.Parse(row["trace_json"], pb.Trace()) if row.get("trace_json") else None
    result = json_format.Parse(row["result_json"], pb.Message()) if row.get("result_json") else None
    predicted = _predicted(result, label_field) if result is not None else None
    return RowOutcome(truth, predicted, trace, row.get("error"))


def run_batch_rows(graph: CheckedGraph, texts: Inputs, truths: Sequence[str], *, batch_size: int = 64,
                   label_field: str = "classification.label") -> list[RowOutcome]:
    """Runs rows through the Ray Data batch path (Ray must be initialised)."""
    import ray

    from modelweave.batch.job import BatchJob

    row_column = "__modelweave_row"  # joins results back to truths; no input column is named so
    if isinstance(texts, TableInputs):
        mapping = texts.choice.derive(texts.table.schema, graph)
        table = texts.table.select(mapping.columns())
        dataset = ray.data.from_arrow(table.append_column(row_column, pa.array(range(table.num_rows))))
        run_kw: dict[str, Any] = {"mapping": mapping}
    else:
        dataset = ray.data.from_items([{row_column: i, "text": t} for i, t in enumerate(texts)])
        run_kw = {"text_column": "text"}
    job = BatchJob(graph, batch_size=batch_size)
    try:
        rows = job.run(dataset, include_trace=True, **run_kw).take_all()
    finally:
        job.shutdown()
    outcomes: list[RowOutcome | None] = [None] * len(truths)
    for row in rows:
        i = row[row_column]
        outcomes[i] = outcome_from_row(row, truths[i], label_field)
    return [o for o in outcomes if o is not None]


def evaluate(versions: Sequence[tuple[str, GraphSpec]], texts: Inputs, truths: Sequence[str], *,
             runner: str = "batch", ablate: bool = False,
             label_field: str = "classification.label") -> list[VersionReport]:
    """Evaluates every version (and, with ``ablate``, each single-node removal of the last one)."""
    from modelweave.evolve import ablations

    jobs: list[tuple[str, GraphSpec, str]] = [(name, spec, "") for name, spec in versions]
    if ablate and versions:
        last_name, last = versions[-1]
        jobs += [(f"{last_name} - {v.removed.rsplit('/', 1)[-1]}", v.spec, v.removed) for v in ablations(last)]
    reports = []
    for name, spec, removed in jobs:
        graph = check_graph(spec)
        started = time.perf_counter()
        outcomes = (run_batch_rows(graph, texts, truths, label_field=label_field) if runner == "batch"
                    else run_local(graph, texts, truths, label_field=label_field))
        report = summarise(name, graph, outcomes, removed)
        reports.append(report)
        print(f"  {name}: acc {report.accuracy:.3f} in {time.perf_counter() - started:.0f} s", flush=True)
    return reports


def accuracy_interval(report: VersionReport, level: float = 0.95) -> tuple[float, float]:
    """Wilson interval of a version's accuracy (from its figures, so it needs no per-row data)."""
    return eval_stats.wilson_interval(round(report.accuracy * report.rows), report.rows, level)


def markdown(reports: Sequence[VersionReport], *, reach_of: Sequence[str] = ()) -> str:
    """A Markdown table; ``reach_of`` names model nodes whose traffic share gets a column."""
    head = ["version", "rows", "accuracy (95 % CI)", "macro-F1", "p50 ms", "p99 ms", "CPU ms/req", "cost/req", "errors"]
    head += [f"reach {n}" for n in reach_of]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in reports:
        low, high = accuracy_interval(r)
        cells = [r.name, str(r.rows), f"{r.accuracy:.3f} ({low:.3f}-{high:.3f})", f"{r.macro_f1:.3f}",
                 f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}", f"{r.cpu_ms:.2f}", f"{r.cost:.2f}", str(r.errors)]
        for node in reach_of:
            share = sum(v for k, v in r.reach.items() if k.rsplit("/", 1)[-1] == node)
            cells.append(f"{share:.0%}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_comparisons(reports: Sequence[VersionReport], reference: str | None = None
                       ) -> tuple[list[eval_stats.PairedComparison], list[str]]:
    """Each non-ablated version against ``reference`` (default: the first, the baseline) on the same rows.

    Returns:
        The comparisons, and the names of versions that could not be paired (other row counts).

    Raises:
        ValueError: no non-ablated version is named ``reference``.
    """
    return eval_stats.compare_versions([(r.name, r.correct) for r in reports if not r.removed], reference)


def comparisons(reports: Sequence[VersionReport], reference: str | None = None,
                paired: tuple[list[eval_stats.PairedComparison], list[str]] | None = None) -> str:
    """Markdown: :func:`paired_comparisons` with verdicts ("" with fewer than two versions).

    Args:
        reports: The evaluated versions.
        reference: Name of the version the others are compared with (default: the first).
        paired: :func:`paired_comparisons`'s result when the caller already has it.
    """
    names = [r.name for r in reports if not r.removed]
    if len(names) < 2:
        return ""
    results, unpaired = paired if paired is not None else paired_comparisons(reports, reference)
    return eval_stats.markdown(results, reference or names[0], unpaired)


def contributions(reports: Sequence[VersionReport]) -> str:
    """Markdown: what changes when each node is removed from the full (last non-ablated) version."""
    full = [r for r in reports if not r.removed]
    ablated = [r for r in reports if r.removed]
    if not full or not ablated:
        return ""
    base = full[-1]
    lines = [f"Contribution of each node of `{base.name}` (change when it is removed):", "",
             "| removed node | Δ accuracy | Δ macro-F1 | Δ CPU ms/req | Δ p50 ms |", "|---|---|---|---|---|"]
    for r in ablated:
        lines.append(f"| `{r.removed}` | {r.accuracy - base.accuracy:+.3f} | {r.macro_f1 - base.macro_f1:+.3f} | "
                     f"{r.cpu_ms - base.cpu_ms:+.2f} | {r.p50_ms - base.p50_ms:+.1f} |")
    return "\n".join(lines) + "\n"


def frontier(reports: Sequence[VersionReport]) -> list[VersionReport]:
    """Versions not beaten on both quality and CPU by another (the Pareto frontier), cheapest first."""
    ordered = sorted(reports, key=lambda r: (r.cpu_ms, -r.accuracy))
    best, out = -1.0, []
    for r in ordered:
        if r.accuracy > best:
            out.append(r)
            best = r.accuracy
    return out


def plot(reports: Sequence[VersionReport], path: str | pathlib.Path, title: str = "quality vs compute") -> None:
    """PNG: accuracy against model CPU ms per request, versions as points, frontier drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in reports:
        marker = "x" if r.removed else "o"
        ax.scatter([max(r.cpu_ms, 1e-3)], [r.accuracy], marker=marker, s=40)
        ax.annotate(r.name, (max(r.cpu_ms, 1e-3), r.accuracy), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    front = frontier(reports)
    ax.plot([max(r.cpu_ms, 1e-3) for r in front], [r.accuracy for r in front], "--", color="#b91c1c",
            lw=1, label="frontier")
    ax.set_xscale("log")
    ax.set_xlabel("model CPU ms per request (log)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def load_table(path: str, label_column: str, limit: int | None = None) -> tuple[pa.Table, list[str]]:
    """Reads a labelled parquet/CSV/JSONL file (pyarrow, no Ray): input columns and reference labels.

    Returns:
        The table without the label column, and the labels as strings.

    Raises:
        ValueError: an unsupported format or a missing label column.
    """
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    suffix = pathlib.Path(path).suffix.lower()
    if suffix == ".parquet":
        table = pq.read_table(path)
    elif suffix == ".csv":
        table = pcsv.read_csv(path)
    elif suffix in (".jsonl", ".json"):
        table = pjson.read_json(path)
    else:
        raise ValueError(f"unsupported dataset format {suffix!r}; use .parquet, .csv or .jsonl")
    if label_column not in table.column_names:
        raise ValueError(f"dataset {path} has no column {label_column!r} (columns: {table.column_names})")
    if limit is not None:
        table = table.slice(0, limit)
    labels = [str(v) for v in table.column(label_column).to_pylist()]
    return table.drop_columns([label_column]), labels


def load_labelled(path: str, text_column: str, label_column: str, limit: int | None = None
                  ) -> tuple[list[str], list[str]]:
    """Reads texts and reference labels from a parquet/CSV/JSONL file (pyarrow, no Ray)."""
    table, labels = load_table(path, label_column, limit)
    if text_column not in table.column_names:
        raise ValueError(f"dataset {path} has no column {text_column!r} (columns: {table.column_names})")
    return [str(t) for t in table.column(text_column).to_pylist()], labels


def reach_nodes(reports: Sequence[VersionReport], top: int = 3) -> list[str]:
    """Model nodes reached by some but not all requests (the interesting routing columns)."""
    partial: dict[str, float] = defaultdict(float)
    for r in reports:
        for node, share in r.reach.items():
            if 0.0 < share < 0.999:
                partial[node.rsplit("/", 1)[-1]] = max(partial[node.rsplit("/", 1)[-1]], share)
    return sorted(partial, key=lambda k: -partial[k])[:top]


def as_dict(report: VersionReport) -> dict[str, Any]:
    """JSON-friendly report (``--json``): the figures plus the accuracy's Wilson 95 % interval.

    The per-row ``correct`` list is left out so the file does not grow with the rows.
    """
    out: dict[str, Any] = {}
    for key, value in report.__dict__.items():
        if key == "correct":
            continue
        out[key] = value
        if key == "accuracy":
            out["accuracy_low"], out["accuracy_high"] = accuracy_interval(report)
    return out
