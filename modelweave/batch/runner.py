"""File-to-file batch jobs: what ``modelweave batch`` and ``cluster/batch_job.py`` run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from modelweave.batch.io import read_input, write_output
from modelweave.batch.job import DEFAULT_BATCH_SIZE, BatchJob, BatchSummary
from modelweave.batch.preflight import preflight
from modelweave.checker import check_graph
from modelweave.serving import embedded_num_cpus
from modelweave.spec import load_graph


@dataclass
class JobOptions:
    """Options of a file-to-file batch job (the CLI flags).

    Attributes:
        input_path: File, folder or glob to read (local path or URI).
        output_path: Folder to write part files to (local path or URI).
        fmt: Input format (default: from the input's extension).
        output_format: Output format (default: from the output's extension, else parquet).
        text_column: Input column holding the text (``--text-column``; default: derived).
        columns: ``PART=COLUMN`` overrides of the derived input mapping (``--column``).
        message_column: Column holding the whole input message as protobuf JSON.
        batch_size: Rows per Ray Data batch (and default micro-batch size per model).
        concurrency: Graph stage actors (default: 1 per 4 cluster CPUs, 1 per 2 when every model runs
            inside the stages).
        timeout_s: Per-row deadline (default: the graph's ``timeout_s``).
        prefix: Prefix of the added column names.
        include_trace: Add a ``trace_json`` column.
        overwrite: Replace an existing output.
        address: Ray cluster to join; None starts an embedded local Ray.
        num_cpus: Logical CPUs of the embedded Ray (default:
            :func:`modelweave.serving.embedded_num_cpus`, as ``modelweave run`` and ``eval``).
        inline: ``"cheap"`` (default: rule-based non-blocking models run inside the graph
            stages) or ``"none"`` (every model node gets an actor pool).
        row_by_row: Run each row as its own graph run instead of each batch together.
    """

    input_path: str
    output_path: str
    fmt: str | None = None
    output_format: str | None = None
    text_column: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    message_column: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    concurrency: int | None = None
    timeout_s: float | None = None
    prefix: str = ""
    include_trace: bool = False
    overwrite: bool = False
    address: str | None = None
    num_cpus: int | None = None
    inline: str = "cheap"
    row_by_row: bool = False


def run_job(graph_path: str, options: JobOptions, *, log: Callable[[str], None] = print) -> BatchSummary:
    """Reads the input, runs the graph over every row, writes the output; returns the summary.

    Everything that can be checked without Ray (graph, formats, the input's schema and
    columns, the output) is checked before Ray starts (:mod:`modelweave.batch.preflight`).

    Raises:
        InvalidArgument: a bad graph, format, path or column (exit code 2 in the CLI).
        ModelweaveError: the job could not run (a model failed to load ...).
    """
    import ray

    from actors.shared_state import NAMESPACE

    graph = check_graph(load_graph(graph_path))
    checked = preflight(graph, options)
    log(f"modelweave: input {checked.mapping.describe()}")
    started_ray = False
    if not ray.is_initialized():
        if options.address:
            log(f"modelweave: joining the Ray cluster at {options.address} ...")
            ray.init(address=options.address, namespace=NAMESPACE, log_to_driver=False)
        else:
            log("modelweave: starting an embedded Ray cluster ...")
            ray.init(address="local", num_cpus=embedded_num_cpus(options.num_cpus),
                     include_dashboard=False, namespace=NAMESPACE,
                     log_to_driver=False)
        started_ray = True
    job: BatchJob | None = None
    try:
        job = BatchJob(graph, batch_size=options.batch_size, concurrency=options.concurrency, inline=options.inline,
                       row_by_row=options.row_by_row)
        log(f"modelweave: {len(job.pools.plans)} model pools ready in {job.load_s:.1f} s ({job.pools.cpus:g} CPUs, "
            f"{len(job.inline)} model(s) inline, {job.concurrency} graph stage(s), "
            f"{_how(job)})")
        start = time.monotonic()
        text = [checked.mapping.text] if checked.mapping.text else []
        dataset = read_input(options.input_path, options.fmt, text_columns=text)
        results = job.run(dataset, mapping=checked.mapping, timeout_s=options.timeout_s,
                          prefix=options.prefix, include_trace=options.include_trace)
        write_output(results, options.output_path, checked.output_format, overwrite=options.overwrite)
        return job.summary(time.monotonic() - start)
    finally:
        if job is not None:
            job.shutdown()
        if started_ray:
            ray.shutdown()


def _how(job: BatchJob) -> str:
    """How the graph stages run, for the job's log line."""
    if job.row_by_row:
        return "row by row: asked for (--row-by-row)"
    if job.row_by_row_parts:
        return f"columnar; row by row inside {', '.join(job.row_by_row_parts)}"
    return "columnar"
