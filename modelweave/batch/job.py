"""Run any graph as a streaming Ray Data batch job, with the same semantics as online serving.

Design: one graph stage (a ``map_batches`` callable class on an actor pool) runs the
graph with the online ingress's :class:`modelweave.executor.Executor` (its caches,
feedback state, callers and node rules), over a caller that sends model calls to
per-model-node actor pools in micro-batches (:mod:`modelweave.batch.pools`,
:mod:`modelweave.batch.caller`). By default a stage walks the graph once per Ray Data
batch for all its rows (:mod:`modelweave.batch.columnar`), applying each node kind's rules
from the same functions the executor calls; ``row_by_row=True`` runs the executor per row.

Why not one Ray Data operator per model node: the flow is dynamic. Routes send each
row to a different branch, validate nodes loop a data-dependent number of times,
parallel nodes aggregate, fallbacks run only on failure, and caches skip whole
sub-flows. A static operator chain would have to re-implement all of that outside the
executor (and keep it in step with it), so batch and online would drift. Instead the
models still get their own pools and real batches (the per-operator benefit), and the
flow logic exists exactly once. The cost of this choice: Ray Data sees one operator,
so its per-operator progress and autoscaling do not apply to the model pools (they are
sized from the graph file), and each step is a hop from the stage to a pool.
By default (``inline="cheap"``) rule-based glue runs in the stage process instead: its
adapters take microseconds, so a pool would cost far more in the hop than it saves
(the batch analogue of operator fusion; the demo graph, all rules, then needs no pool).

Semantics shared with online: the request checks and limits of the ingress
(``check_request``, ``check_input``), per-row deadlines (the graph's ``timeout_s``),
typed errors, one result cache per cache node shared by every stage of the job (plus
single-flight inside a stage, so duplicates in one batch compute once), and feedback
variables shared by the whole job (starting from their initial values, like a freshly
deployed graph). Feedback makes results depend on processing order, as it does
online under concurrency.

Lifetime: :class:`BatchJob` starts the model pools and the job's state actor when it
is created (so a model that cannot load fails the job before any data is read). The
returned dataset is lazy and streams when consumed; the pools live until
:meth:`BatchJob.shutdown` or the driver exits.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from actors.shared_state import NAMESPACE
from modelweave.batch.columnar import row_by_row_parts
from modelweave.batch.inputs import ColumnChoice, InputMapping
from modelweave.batch.pools import (
    RESERVED_CPUS,
    ModelPools,
    blocking_models,
    cheap_models,
    fit_plans,
    plan_pool,
)
from modelweave.batch.rows import check_result_columns
from modelweave.batch.shared import JobState
from modelweave.batch.stage import GraphStage
from modelweave.checker import CheckedGraph, check_graph
from modelweave.errors import InvalidArgument, ResourceExhausted
from modelweave.spec import GraphSpec, dump_graph

#: Rows per Ray Data batch by default. Each batch costs the stage a fixed ~10 ms (a Ray task
#: call, Arrow conversion, one event-loop run, the state actor's calls), and a columnar stage
#: pays each node's fixed cost once per batch. Row by row, on the demo graph (20,000 rows, 2
#: cores): 937 / 1,362 / 1,191 / 1,087 rows/s at 64 / 256 / 512 / 1,024. Columnar (40,000
#: rows, steady state against a plain loop, 2026-12-05): 0.80-0.88x at 256, 1.07x at 512,
#: 1.01-1.14x at 1,024, 1.16x at 2,048; over the whole job 0.54-0.60x / 0.68x / 0.63-0.67x / 0.69x.
DEFAULT_BATCH_SIZE = 1024

#: Largest micro-batch a model pool gets by default (``batch.batch_size`` overrides it). Not
#: the Ray Data batch: a pool worker answers one micro-batch at a time, so a column of 1,024
#: rows for one model goes out as four calls that the pool's workers share.
POOL_BATCH_SIZE = 256

#: Ray Data block size cap: small blocks keep the job streaming (RAY_NOTES).
TARGET_MAX_BLOCK_SIZE = 8 * 1024 * 1024

#: With several graph stages, input blocks are split to this many Ray Data batches each. Ray
#: Data hands a whole block to one stage actor, and an 8 MiB block holds ~200k short texts, so
#: a small file went to one actor while the others idled. Measured (demo graph, 30,000 rows in
#: one block, 2 cores, two runs each): one stage 1,462 / 1,573 rows/s; two stages, blocks of one
#: batch (256 rows) 2,268 / 2,126, of four batches 2,458 / 2,328. One stage is not split: the
#: split step only costs it (1,331 / 1,402).
STAGE_BLOCK_BATCHES = 4


@dataclass
class BatchSummary:
    """What a finished job did.

    Attributes:
        rows: Rows processed by the graph stage.
        failures: Rows with an ``error``.
        cache_hits: Rows answered (partly) from a cache node.
        routes: Count of each ``route`` value among successful rows.
        errors: Count of each error code among failed rows.
        elapsed_s: Wall time of the data processing (reading, the graph, writing).
        startup_s: Wall time spent starting the model pools before that.
        steady_rows_per_s: Rows/s from the moment every graph stage had finished a batch to
            the last finished batch (leaves out the stages' start-up); None when no batch
            finished after that moment.
    """

    rows: int
    failures: int
    cache_hits: int
    routes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    startup_s: float = 0.0
    steady_rows_per_s: float | None = None

    @property
    def rows_per_s(self) -> float:
        """Throughput over ``elapsed_s``."""
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def format(self, top: int = 10) -> str:
        """Human-readable multi-line summary (what the CLI prints)."""
        lines = [f"rows: {self.rows}  failures: {self.failures}  cache hits: {self.cache_hits}  "
                 f"elapsed: {self.elapsed_s:.1f} s ({self.rows_per_s:.0f} rows/s) + {self.startup_s:.1f} s startup"]
        if self.steady_rows_per_s:
            lines[0] += f"; steady state {self.steady_rows_per_s:.0f} rows/s"
        if self.routes:
            lines.append("routes:")
            for route, n in sorted(self.routes.items(), key=lambda kv: -kv[1])[:top]:
                lines.append(f"  {n:>8}  {route}")
            if len(self.routes) > top:
                lines.append(f"  ... {len(self.routes) - top} more")
        if self.errors:
            lines.append("errors: " + ", ".join(f"{code} x{n}" for code, n in sorted(self.errors.items())))
        return "\n".join(lines)


def default_concurrency(cpus: float, *, stages_run_models: bool) -> int:
    """Graph stage actors for a cluster of ``cpus`` logical CPUs (at least 1).

    One per 2 CPUs when the stages run models that do the work: every model inline (demo
    graph, 2 cores declared as 4 CPUs: 1,665-1,781 rows/s with one stage, 2,445-2,509 with
    two, 2,389-2,591 with three, 1,879-2,167 with four), or blocking models inline beside the
    pools (triage, its embedder, TF-IDF and grounding models in the stages, spaCy and MiniLM
    in pools, 11,319 rows, columnar: 95-102 rows/s with one stage, 124-149 with two, 134 with
    three). One per 4 when the stages run only rule-based glue and the pools do the model work.
    """
    return max(1, int(cpus) // (2 if stages_run_models else 4))


def default_stage_count(graph: GraphSpec | CheckedGraph, cpus: float, inline: str | Collection[str] = "cheap") -> int:
    """Graph stages a job of ``graph`` gets by default on ``cpus`` logical CPUs (:func:`default_concurrency`).

    Args:
        graph: The graph.
        cpus: Logical CPUs of the cluster.
        inline: The job's ``inline`` option.
    """
    checked = _as_checked(graph)
    chosen = _inline_set(checked, inline)
    pooled = set(checked.models) - chosen
    return default_concurrency(cpus, stages_run_models=not pooled or bool(blocking_models(checked, chosen)))


def _as_checked(graph: GraphSpec | CheckedGraph) -> CheckedGraph:
    return graph if isinstance(graph, CheckedGraph) else check_graph(graph)


def _wait_for_cpus(wanted: float, timeout_s: float = 20.0) -> dict[str, float]:
    """Free resources once ``wanted`` CPUs (at most the cluster's) are free, or at the timeout.

    Actors of a job that just ended (its pools, Ray Data's stage actors) release their
    CPUs asynchronously; planning against that moment would starve the new job.
    """
    import ray

    wanted = min(wanted, float(ray.cluster_resources().get("CPU", 0.0)))
    deadline = time.monotonic() + timeout_s
    while True:
        available: dict[str, float] = ray.available_resources()
        if float(available.get("CPU", 0.0)) >= wanted - 1e-6 or time.monotonic() >= deadline:
            return available
        time.sleep(0.2)


def _inline_set(graph: CheckedGraph, inline: str | Collection[str]) -> set[str]:
    """Resolves the ``inline`` option to model node names.

    Raises:
        InvalidArgument: an unknown policy or node name.
    """
    if isinstance(inline, str):
        if inline == "none":
            return set()
        if inline == "cheap":
            return cheap_models(graph)
        raise InvalidArgument(f"inline must be 'none', 'cheap' or a list of model names, not {inline!r}")
    unknown = set(inline) - set(graph.models)
    if unknown:
        raise InvalidArgument(f"inline names unknown model node(s) {sorted(unknown)}")
    return set(inline)


class BatchJob:
    """One batch run of a graph: model pools, the job's state actor and the graph stage.

    Args:
        graph: The graph (checked here when given as a spec).
        batch_size: Rows per Ray Data batch; a model pool's largest micro-batch is the smaller
            of it and :data:`POOL_BATCH_SIZE` unless the node's ``batch.batch_size`` says.
        concurrency: Graph stage actors (default: :func:`default_concurrency`).
        stage_num_cpus: Logical CPUs per graph stage actor.
        pools: Reuse pools started for an identical set of model nodes (not shut down
            by this job).
        max_wait_s: Longest wait of a model call for its micro-batch to fill.
        inline: Model nodes to run inside the graph stages instead of their own pools:
            ``"cheap"`` (default: non-blocking rule-based adapters without GPU or batch
            resource settings, and not marked ``deployment.inline: false``; saves one
            process hop per step, which costs more than such a model), ``"none"`` (every
            model node gets a pool, as online every one may get a deployment), or
            explicit node names.
        row_by_row: Run every row as its own graph run in the stages, as online; by default
            each Ray Data batch runs through the graph together (columnar,
            :mod:`modelweave.batch.columnar`).
    """

    def __init__(self, graph: GraphSpec | CheckedGraph, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 concurrency: int | None = None, stage_num_cpus: float = 0.25, pools: ModelPools | None = None,
                 max_wait_s: float = 0.005, inline: str | Collection[str] = "cheap",
                 row_by_row: bool = False) -> None:
        import ray

        start = time.monotonic()
        if batch_size < 1:
            raise InvalidArgument("batch_size must be at least 1")
        self.graph = _as_checked(graph)
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.inline = _inline_set(self.graph, inline)
        #: Whether the stages run each row as its own graph run (else columnar).
        self.row_by_row = row_by_row
        #: Nodes a columnar stage hands to the executor row by row ("<path> (<why>)").
        self.row_by_row_parts = [] if row_by_row else row_by_row_parts(self.graph)
        pooled = set(self.graph.models) - self.inline
        self.concurrency = concurrency or default_stage_count(
            self.graph, float(ray.cluster_resources().get("CPU", 1)), self.inline)
        self.stage_num_cpus = stage_num_cpus
        if pools is not None:
            if not pools.covers(self.graph, pooled):
                raise InvalidArgument("the given pools do not run this graph's pooled model nodes")
            self.pools, self._owns_pools = pools, False
        else:
            wanted = [plan_pool(self.graph.models[n], min(batch_size, POOL_BATCH_SIZE)) for n in sorted(pooled)]
            stage_cpus = self.concurrency * stage_num_cpus
            available = _wait_for_cpus(RESERVED_CPUS + stage_cpus + sum(p.total_cpus for p in wanted))
            plans = fit_plans(wanted, available_cpus=float(available.get("CPU", 0.0)),
                              available_gpus=float(available.get("GPU", 0.0)), stage_cpus=stage_cpus)
            self.pools, self._owns_pools = ModelPools(self.graph, {p.name: p for p in plans}), True
        self.job_id = uuid.uuid4().hex[:8]
        self.state: Any = ray.remote(JobState).options(  # type: ignore[attr-defined]
            name=f"modelweave-batch-state:{self.graph.spec.name}:{self.job_id}", namespace=NAMESPACE,
            num_cpus=0, max_restarts=0).remote()
        try:
            self.pools.wait_ready()
            self.load_s = time.monotonic() - start
            self._check_room()
        except BaseException:
            self.shutdown()
            raise

    def _check_room(self) -> None:
        """Refuses to start when the graph stages would leave Ray Data's listing task no whole CPU.

        Raises:
            ResourceExhausted: instead of the silent hang Ray Data would run into.
        """
        stages = self.concurrency * self.stage_num_cpus
        free = float(_wait_for_cpus(RESERVED_CPUS + stages).get("CPU", 0.0)) - stages
        if free < RESERVED_CPUS - 1e-6:
            raise ResourceExhausted(
                f"after the model pools, {self.concurrency} graph stage(s) of {self.stage_num_cpus:g} CPU would "
                f"leave {max(free, 0):.2f} CPU free; Ray Data needs {RESERVED_CPUS:g} to read and write. Lower "
                "the stage concurrency, or start Ray with more logical CPUs (--num-cpus)")

    def run(self, dataset: Any, *, text_column: str | None = None, columns: Mapping[str, str] | None = None,
            message_column: str | None = None, mapping: InputMapping | None = None, timeout_s: float | None = None,
            prefix: str = "", include_trace: bool = False) -> Any:
        """Returns the lazy dataset of results: input columns plus result/trace/error columns.

        Input columns map to the graph's input parts (:mod:`modelweave.batch.inputs`):
        derived from the schema unless ``mapping`` is given, with the overrides below.

        Args:
            dataset: A ``ray.data.Dataset`` with the graph's input column(s).
            text_column: Column holding each row's input text (default: derived, ``text``).
            columns: ``PART=COLUMN`` overrides (``{"Embedding": "features"}``).
            message_column: Column holding the whole input message as protobuf JSON.
            mapping: An already derived mapping (the CLI's pre-flight); skips derivation.
            timeout_s: Per-row deadline (default: the graph's ``timeout_s``).
            prefix: Prefix for the added column names (when the input already has e.g. ``label``).
            include_trace: Also add ``trace_json`` with each row's full trace.

        Raises:
            InvalidArgument: the input schema (when known without reading) has no column for
                an input part or already has a result column name.
        """
        import ray

        choice = ColumnChoice(dict(columns or {}), text_column, message_column)
        schema = dataset.schema(fetch_if_missing=False)
        if schema is not None:
            check_result_columns(schema.names, prefix=prefix, include_trace=include_trace)
            arrow = _arrow_schema(schema)
            if mapping is None and arrow is not None:
                mapping = choice.derive(arrow, self.graph)
        if self.concurrency > 1:  # every stage gets blocks, not only the one that took the first
            dataset = dataset.repartition(target_num_rows_per_block=self.batch_size * STAGE_BLOCK_BATCHES)
        out = dataset.map_batches(
            GraphStage,
            compute=ray.data.ActorPoolStrategy(size=self.concurrency),
            fn_constructor_kwargs={
                "graph": dump_graph(self.graph.spec),
                "pools": self.pools.handles(),
                "batch_sizes": self.pools.batch_sizes(),
                "state_actor": self.state,
                "choice": choice,
                "mapping": mapping,
                "timeout_s": timeout_s,
                "prefix": prefix,
                "include_trace": include_trace,
                "max_wait_s": self.max_wait_s,
                "inline": sorted(self.inline),
                "columnar": not self.row_by_row,
            },
            batch_size=self.batch_size,
            batch_format="pyarrow",
            num_cpus=self.stage_num_cpus,
        )
        configure_context(out.context)
        return out

    def summary(self, elapsed_s: float = 0.0) -> BatchSummary:
        """Counters recorded by the graph stages so far (call after consuming the dataset).

        Args:
            elapsed_s: Processing wall time the caller measured (for ``rows_per_s``).
        """
        import ray

        c = ray.get(self.state.counters.remote())
        return BatchSummary(rows=c["rows"], failures=c["failures"], cache_hits=c["cache_hits"],
                            routes=c["routes"], errors=c["errors"], elapsed_s=elapsed_s, startup_s=self.load_s,
                            steady_rows_per_s=c["steady_rows_per_s"])

    def cache_stats(self) -> dict[str, Any]:
        """Sizes and hit/miss counts of the job's cache nodes."""
        import ray

        stats: dict[str, Any] = ray.get(self.state.stats.remote())
        return stats

    def shutdown(self, wait_s: float = 10.0) -> None:
        """Stops the job's state actor and the pools it started (idempotent).

        Args:
            wait_s: How long to wait for Ray to free the pools' CPUs (``ray.kill`` is
                asynchronous; a job planned right after would otherwise see them taken).
        """
        import ray

        released = self.pools.cpus if self._owns_pools and self.pools.actors else 0.0
        before = float(ray.available_resources().get("CPU", 0.0))
        if self._owns_pools:
            self.pools.shutdown()
        try:
            ray.kill(self.state)
        except Exception:  # already gone
            pass
        deadline = time.monotonic() + wait_s
        while released and time.monotonic() < deadline:
            if float(ray.available_resources().get("CPU", 0.0)) >= before + released - 1e-3:
                break
            time.sleep(0.1)


def _arrow_schema(schema: Any) -> pa.Schema | None:
    """A Ray Data schema as a pyarrow one; None when a column has no Arrow type (pandas blocks)."""
    types = list(schema.types)
    if not all(isinstance(t, pa.DataType) for t in types):
        return None
    return pa.schema(list(zip(schema.names, types, strict=True)))


def configure_context(ctx: Any) -> None:
    """Keeps a dataset streaming: lowers ``target_max_block_size`` to 8 MiB (never raises it)."""
    if ctx.target_max_block_size is None or ctx.target_max_block_size > TARGET_MAX_BLOCK_SIZE:
        ctx.target_max_block_size = TARGET_MAX_BLOCK_SIZE


def run_batch(graph: GraphSpec | CheckedGraph, dataset: Any, *, text_column: str | None = None,
              columns: Mapping[str, str] | None = None, message_column: str | None = None,
              batch_size: int = DEFAULT_BATCH_SIZE,
              concurrency: int | None = None, timeout_s: float | None = None, prefix: str = "",
              include_trace: bool = False, inline: str | Collection[str] = "cheap", row_by_row: bool = False) -> Any:
    """Runs ``graph`` over ``dataset`` as a streaming batch job; returns the lazy result dataset.

    Starts the model pools now (they live until the driver exits; use :class:`BatchJob`
    to stop them earlier or to read the job's summary). See :meth:`BatchJob.run` for the
    output columns.
    """
    job = BatchJob(graph, batch_size=batch_size, concurrency=concurrency, inline=inline, row_by_row=row_by_row)
    return job.run(dataset, text_column=text_column, columns=columns, message_column=message_column,
                   timeout_s=timeout_s, prefix=prefix, include_trace=include_trace)
