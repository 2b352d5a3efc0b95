"""The batch half of ``throughput.py``: the same graph as a Ray Data job and as a plain loop.

* **batch job**: :class:`modelweave.batch.BatchJob` with its defaults (cheap models inside
  the graph stage, heavy ones in micro-batched actor pools) over ``rows`` held-out texts
  written to parquet; rows/s over the whole job (reading, graph, writing; pool start-up
  excluded and printed) and in steady state (first to last finished batch).
* **plain loop**: one process, the executor over every adapter loaded in-process
  (:class:`modelweave.local.LocalCaller`), one row after another: what a user would write
  without modelweave's batch path.

Model CPU per row comes from the rows' traces (``cpuMs`` of every span), so the batch job's
figure shows what batching saved per row. The floors are ``cores x 1000 / model CPU ms``:
the single-request floor uses the online model CPU per request (from the online phase of the
same run), the batch floor the batch job's own per-row model CPU.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import tempfile
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class BatchResult:
    """Figures of one batch-path mode."""

    mode: str
    rows: int
    seconds: float
    steady_rows_s: float | None
    model_cpu_ms: float
    failures: int
    startup_s: float = 0.0

    @property
    def rows_s(self) -> float:
        """Rows per second over the whole run."""
        return self.rows / self.seconds if self.seconds else 0.0


def _model_ms(trace: dict[str, Any]) -> float:
    return sum(float(s.get("cpuMs", 0.0)) for s in trace.get("spans", []))


def batch_job(spec: Any, texts: list[str], *, row_by_row: bool = False,
              concurrency: int | None = None) -> BatchResult:
    """Runs ``texts`` through the graph as a Ray Data job (Ray must be initialised).

    Args:
        row_by_row: Run the graph stages row by row instead of columnar (the default).
        concurrency: Graph stages (default: what the job picks for this Ray's CPUs).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from modelweave.batch import BatchJob, read_input, write_output

    with tempfile.TemporaryDirectory(prefix="mw-throughput-") as tmp:
        folder = pathlib.Path(tmp) / "in"
        folder.mkdir()
        for part in range(4):  # a few files, so reading streams like a real input
            pq.write_table(pa.table({"text": texts[part::4]}), folder / f"part-{part}.parquet")
        job = BatchJob(spec, row_by_row=row_by_row, concurrency=concurrency)
        how = "row by row" if job.row_by_row else "columnar"
        try:
            start = time.perf_counter()
            out = pathlib.Path(tmp) / "out"
            write_output(job.run(read_input(str(folder)), include_trace=True), str(out), "parquet")
            seconds = time.perf_counter() - start
            summary = job.summary(seconds)
        finally:
            job.shutdown()
        traces = [json.loads(t) for t in pq.read_table(out, columns=["trace_json"]).column(0).to_pylist() if t]
    model = sum(_model_ms(t) for t in traces) / max(len(traces), 1)
    return BatchResult(f"batch job (Ray Data, defaults, {how})", summary.rows, seconds, summary.steady_rows_per_s,
                       model, summary.failures, summary.startup_s)


def plain_loop(spec: Any, texts: list[str]) -> BatchResult:
    """Runs ``texts`` one by one through the executor with every adapter in this process."""
    from modelweave.checker import check_graph
    from modelweave.codecs import message_from_text
    from modelweave.executor import Executor
    from modelweave.local import LocalCaller

    graph = check_graph(spec)
    load = time.perf_counter()
    executor = Executor(graph, LocalCaller(graph))
    startup = time.perf_counter() - load

    async def loop() -> tuple[list[float], int]:
        models, failures = [], 0
        for text in texts:
            try:
                result = await executor.run(message_from_text(text))
            except Exception:
                failures += 1
                continue
            models.append(sum(s.cpu_ms for s in result.trace.spans))
        return models, failures

    start = time.perf_counter()
    models, failures = asyncio.run(loop())
    seconds = time.perf_counter() - start
    return BatchResult("plain loop (one process, row by row)", len(texts), seconds, None,
                       sum(models) / max(len(models), 1), failures, startup)


def batch_table(results: list[BatchResult], online_model_ms: float) -> str:
    """Markdown table: rows/s against the single-request floor, the batch floor and the loop."""
    cores = os.cpu_count() or 1
    single_floor = cores * 1000 / online_model_ms if online_model_ms else float("nan")
    loop = next((r for r in results if r.mode.startswith("plain")), None)
    lines = [f"| mode | rows | rows/s | steady rows/s | model CPU ms/row | vs single-request floor "
             f"({single_floor:.0f} rows/s) | vs its own CPU floor | vs plain loop | start-up s | failures |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        best = r.steady_rows_s or r.rows_s
        own_floor = cores * 1000 / r.model_cpu_ms if r.model_cpu_ms else float("nan")
        vs_loop = f"{r.rows_s / loop.rows_s:.2f}x (steady {best / loop.rows_s:.2f}x)" if loop else "-"
        lines.append(f"| {r.mode} | {r.rows} | {r.rows_s:.1f} | {best:.1f} | {r.model_cpu_ms:.2f} | "
                     f"{r.rows_s / single_floor:.2f}x (steady {best / single_floor:.2f}x) | "
                     f"{best / own_floor:.0%} | {vs_loop} | {r.startup_s:.1f} | {r.failures} |")
    return "\n".join(lines)
