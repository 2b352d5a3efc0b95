"""Batch throughput of the demo graph: Ray Data batch job vs a naive loop vs online Serve.

All three run the same graph (``examples/demo.yaml``) over the same generated customer
messages (mostly distinct, about a quarter repeated, so the cache node matters):

* **(a) batch**: ``modelweave.batch`` on a local Ray: parquet files in, parquet out
  (read, graph stage + per-model actor pools, write), at 1x and 10x rows; once with a
  pool per model node (``inline=none``) and once with the rule-based models inside the
  graph stage (``inline=cheap``, the job's default); the stages run each Ray Data batch
  through the graph together (columnar, the default), and with ``--row-by-row`` the
  ``inline=cheap`` runs are repeated with one graph run per row, in the same run;
* **(b) naive**: one process, ``Executor`` over ``LocalCaller``, one row at a time
  (measured before and after the Ray runs; the mean is the baseline);
* **(c) online**: the graph deployed with ``deployments.app.graph_app`` on Ray Serve,
  driven over HTTP by ``--clients`` concurrent httpx clients.

With ``--model-ms N`` every model also sleeps N ms per ``predict`` call (plus
``--row-ms`` per row), like an accelerator-backed model with a fixed per-call cost; this
shows what micro-batching buys once models are not microsecond rules.

It also samples the memory of the driver and every process of its Ray cluster (PSS,
so shared pages are not counted twice; read from ``/proc``, Linux only) during the 1x and
10x batch runs, to show that memory does not grow with the input. Run from the
repository root::

    python benchmarks/batch_throughput.py                 # 2000 rows, 10x, 600 online requests
    python benchmarks/batch_throughput.py --rows 500 --scale 4 --online-rows 200   # quick
    python benchmarks/batch_throughput.py --model-ms 5 --rows 400 --scale 5 --online-rows 300
    python benchmarks/batch_throughput.py --online-rows 0 --scale 20 --row-by-row   # columnar vs row by row
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from modelweave.adapters.base import ModelAdapter, build_adapter, resolve_adapter
from modelweave.batch.job import DEFAULT_BATCH_SIZE
from modelweave.checker import check_graph
from modelweave.codecs import message_from_text
from modelweave.executor import Executor
from modelweave.local import LocalCaller
from modelweave.serving import embedded_num_cpus
from modelweave.spec import GraphSpec, load_graph
from modelweave.v1 import messages_pb2 as pb

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
#: Importable name of this file inside Ray workers (``HERE`` is on their PYTHONPATH).
MODULE = "batch_throughput"

_POS = ["great", "love", "thanks", "perfect", "fast", "helpful", "amazing", "nice"]
_NEG = ["broken", "late", "refund", "terrible", "slow", "damaged", "wrong", "useless"]
_EN = ["the {p} delivery, {p} support", "my parcel is {n} and {n}, I want a refund", "where is my order {i}",
       "not {p} at all, really disappointed", "it is {p} but {n}", "the app is {n} and {n}", "{p}, thank you"]
_OTHER = ["Le colis est arrivé en retard, je suis très déçu ({i})", "Merci, le produit est super ({i})",
          "El producto es muy bueno, gracias ({i})", "Mi pedido llegó roto y tarde ({i})",
          "Das ist sehr gut, danke ({i})", "Mein Paket ist kaputt und sehr spät ({i})"]


def make_texts(n: int, seed: int = 11) -> list[str]:
    """Customer-like messages: ~70 % English, ~25 % repeats of 50 frequent ones."""
    rng = random.Random(seed)

    def one(i: int) -> str:
        template = rng.choice(_EN * 3 + _OTHER)
        return template.format(p=rng.choice(_POS), n=rng.choice(_NEG), i=i)

    frequent = [one(i) for i in range(50)]
    return [rng.choice(frequent) if rng.random() < 0.25 else one(i) for i in range(n)]


class CostParams(BaseModel):
    """Parameters of :class:`SimulatedCost`."""

    model_config = ConfigDict(extra="forbid")
    impl: str
    params: dict[str, Any] = {}
    call_ms: float
    row_ms: float = 0.0


class SimulatedCost(ModelAdapter):
    """Wraps a model and sleeps ``call_ms`` per predict call plus ``row_ms`` per row."""

    Params = CostParams

    @classmethod
    def signature(cls, params: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
        p = cls.validate_params(params)
        inner, inner_params = resolve_adapter(p.impl, p.params)
        return inner.signature(inner_params)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.inner = build_adapter(self.params.impl, self.params.params)

    def load(self) -> None:
        self.inner.load()

    def predict(self, batch: Sequence[pb.Message]) -> list[Any]:
        time.sleep((self.params.call_ms + self.params.row_ms * len(batch)) / 1000.0)
        return list(self.inner.predict(batch))


def with_model_cost(spec: GraphSpec, call_ms: float, row_ms: float) -> GraphSpec:
    """The graph with every model wrapped in :class:`SimulatedCost`."""

    def wrap(node: Any) -> None:
        if isinstance(node, dict) and node.get("kind") == "model":
            node["params"] = {"impl": node["impl"], "params": node.get("params", {}), "call_ms": call_ms,
                              "row_ms": row_ms}
            node["impl"] = f"{MODULE}:SimulatedCost"
        for value in node.values() if isinstance(node, dict) else node if isinstance(node, list) else ():
            wrap(value)

    data = spec.model_dump(mode="json")
    wrap(data["flow"])
    return GraphSpec.model_validate(data)


@dataclass
class Measure:
    """One throughput figure."""

    name: str
    rows: int
    seconds: float
    failures: int = 0
    note: str = ""

    @property
    def rate(self) -> float:
        """Rows per second."""
        return self.rows / self.seconds if self.seconds else 0.0


# -- (b) naive loop ----------------------------------------------------------------------


def naive_in_fresh_process(args: argparse.Namespace) -> Measure:
    """:func:`naive` in a new interpreter, as a user's loop script would run.

    Measured in this process after the Ray jobs, the same loop read 4,791-5,280 rows/s against
    7,808-8,092 before them (2026-12-05): the driver then holds Ray's, Arrow's and the jobs'
    objects, and the collector and caches pay for them.
    """
    argv = [sys.executable, __file__, "--naive-only", "--graph", args.graph, "--rows", str(args.rows),
            "--scale", str(args.scale), "--model-ms", str(args.model_ms), "--row-ms", str(args.row_ms)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=600)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return Measure("(b) naive per-row loop", args.rows, out["seconds"], out["failures"])


def naive(spec: GraphSpec, texts: list[str]) -> Measure:
    """Same executor and models in this process, one row at a time."""
    graph = check_graph(spec)
    executor = Executor(graph, LocalCaller(graph))

    async def loop() -> int:
        failures = 0
        for text in texts:
            try:
                await executor.run(message_from_text(text))
            except Exception:
                failures += 1
        return failures

    start = time.perf_counter()
    failures = asyncio.run(loop())
    return Measure("(b) naive per-row loop", len(texts), time.perf_counter() - start, failures)


# -- memory ------------------------------------------------------------------------------


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it, from ``/proc/<pid>/stat``."""
    children: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out = [root]
    for pid in out:  # grows while iterating: breadth-first walk
        out.extend(children.get(pid, []))
    return out


def _pss(pid: int) -> tuple[int, bool]:
    """(PSS bytes, is a Ray worker) of one process; (0, False) when it is gone."""
    try:
        rollup = pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text()
        cmd = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()[:200]
    except OSError:
        return 0, False
    kib = next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return kib * 1024, cmd.startswith(b"ray::") or b"default_worker" in cmd


class MemorySampler:
    """Peak summed PSS of this process and all its descendants (the local Ray cluster)."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.peak_total = 0
        self.peak_workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def sample() -> tuple[int, int]:
        """(all processes, Ray worker processes) in bytes, right now."""
        total = workers = 0
        for pid in _descendants(os.getpid()):
            size, is_worker = _pss(pid)
            total += size
            workers += size if is_worker else 0
        return total, workers

    def _run(self) -> None:
        while not self._stop.is_set():
            total, workers = self.sample()
            self.peak_total = max(self.peak_total, total)
            self.peak_workers = max(self.peak_workers, workers)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- (a) batch job -----------------------------------------------------------------------


def write_inputs(texts: list[str], folder: pathlib.Path, files: int = 4) -> None:
    """Splits ``texts`` over a few parquet files (with an id column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    for f in range(files):
        ids = list(range(f, len(texts), files))
        pq.write_table(pa.table({"id": ids, "text": [texts[i] for i in ids]}), folder / f"part-{f}.parquet")


def batch_run(spec: GraphSpec, texts: list[str], work: pathlib.Path, label: str, *, inline: str = "none",
              batch_size: int = DEFAULT_BATCH_SIZE, stages: int | None = None,
              row_by_row: bool = False) -> tuple[Measure, MemorySampler]:
    """Parquet in -> graph -> parquet out (fresh pools and state); returns the figure and memory peaks."""
    from modelweave.batch import BatchJob, read_input, write_output

    folder = work / f"in-{len(texts)}"
    if not folder.exists():
        write_inputs(texts, folder)
    job = BatchJob(spec, batch_size=batch_size, inline=inline, concurrency=stages, row_by_row=row_by_row)
    how = "row by row" if job.row_by_row else "columnar"
    label = f"{label}, inline={inline}, {job.concurrency} stage(s), {how}"
    startup = job.load_s
    try:
        with MemorySampler() as memory:
            start = time.perf_counter()
            out = work / f"out-{label.replace(', ', '-')}"
            write_output(job.run(read_input(str(folder))), str(out), "parquet")
            seconds = time.perf_counter() - start
        summary = job.summary(seconds)
    finally:
        job.shutdown()
    steady = f"{summary.steady_rows_per_s:.0f}" if summary.steady_rows_per_s else "n/a"
    note = f"steady state {steady} rows/s; {summary.cache_hits} cache hits; +{startup:.1f} s pool startup"
    return Measure(f"(a) batch job, {label}", summary.rows, seconds, summary.failures, note), memory


# -- (c) online --------------------------------------------------------------------------


def online(spec: GraphSpec, texts: list[str], clients: int) -> Measure:
    """Deploys the graph on Serve and sends ``texts`` with ``clients`` concurrent HTTP clients."""
    import httpx
    from ray import serve

    from deployments.app import graph_app
    from modelweave.ports import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(graph_app(spec), name=spec.name, route_prefix=f"/{spec.name}")
    url = f"http://127.0.0.1:{port}/{spec.name}"

    async def drive() -> tuple[float, int]:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            for text in texts[:10]:  # warm up
                await client.post(url, json={"input": {"text": {"content": text}}})
            queue = iter(texts)
            failures = 0

            async def worker() -> None:
                nonlocal failures
                for text in queue:
                    r = await client.post(url, json={"input": {"text": {"content": text}}})
                    failures += r.status_code != 200

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            return time.perf_counter() - start, failures

    seconds, failures = asyncio.run(drive())
    return Measure(f"(c) online Serve, {clients} HTTP clients", len(texts), seconds, failures)


# -- main --------------------------------------------------------------------------------


@contextmanager
def local_ray(num_cpus: int | None) -> Iterator[None]:
    """A fresh local Ray cluster owned by this process (never joins a running one)."""
    import ray
    from ray.data import DataContext

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             namespace="modelweave-bench", runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}})
    DataContext.get_current().enable_progress_bars = False
    DataContext.get_current().print_on_execution_start = False
    try:
        yield
    finally:
        ray.shutdown()
        # The loop measured after the jobs must not share the cores with Ray's processes on
        # their way out.
        deadline = time.monotonic() + 30
        while len(_descendants(os.getpid())) > 1 and time.monotonic() < deadline:
            time.sleep(0.2)


def mib(n: float) -> str:
    """Bytes as MiB."""
    return f"{n / 2**20:,.0f} MiB"


def report(measures: list[Measure], baseline: float, echo: Callable[[str], None] = print) -> None:
    """The throughput table, with ratios against the naive loop."""
    echo(f"\n{'mode':<56} {'rows':>7} {'seconds':>8} {'rows/s':>8} {'vs (b)':>7}  failures  note")
    for m in measures:
        echo(f"{m.name:<56} {m.rows:>7} {m.seconds:>8.1f} {m.rate:>8.0f} {m.rate / baseline:>6.2f}x  "
             f"{m.failures:>8}  {m.note}")


def main(argv: list[str] | None = None) -> None:
    """Runs the three modes and prints throughput ratios and memory peaks."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graph", default=str(REPO / "examples" / "demo.yaml"))
    parser.add_argument("--rows", type=int, default=2000, help="rows of the 1x batch run and the naive loop")
    parser.add_argument("--scale", type=int, default=10, help="size of the large batch run, in multiples of --rows")
    parser.add_argument("--online-rows", type=int, default=600, help="requests sent to the online path (0: skip it)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients of the online path")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="rows per Ray Data batch")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="logical CPUs of the local Ray (default: max(4, cores), what `modelweave batch` declares)")
    parser.add_argument("--model-ms", type=float, default=0.0, help="simulated cost of each model call (ms)")
    parser.add_argument("--row-ms", type=float, default=0.0, help="simulated cost per row of a model call (ms)")
    parser.add_argument("--stages", default="0", help="graph stage counts of the inline=cheap runs, comma-separated "
                        "(0: the job's default); e.g. 1,0 compares one stage with the default")
    parser.add_argument("--row-by-row", action="store_true",
                        help="also run the inline=cheap jobs row by row (the stages' other mode), in the same run")
    parser.add_argument("--naive-only", action="store_true", help=argparse.SUPPRESS)  # one loop, in a fresh process
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    spec = load_graph(args.graph)
    if args.model_ms or args.row_ms:
        spec = with_model_cost(spec, args.model_ms, args.row_ms)
    texts = make_texts(args.rows * max(args.scale, 1))
    small = texts[:args.rows]
    if args.naive_only:
        loop = naive(spec, small)
        print(json.dumps({"seconds": loop.seconds, "failures": loop.failures}))
        return
    print(f"graph {spec.name!r}; model cost {args.model_ms:g} ms/call + {args.row_ms:g} ms/row; "
          f"{os.cpu_count()} cores ({embedded_num_cpus(args.num_cpus)} logical CPUs for Ray); "
          f"load average {os.getloadavg()[0]:.1f}")

    first = naive_in_fresh_process(args)
    measures: list[Measure] = []
    # The CLI's embedded Ray declares max(4, cores) CPUs, so a 2-core machine gets two graph stages;
    # with Ray's default (cores) it would get one, and this would measure a job no user runs.
    cpus = embedded_num_cpus(args.num_cpus)
    with tempfile.TemporaryDirectory(prefix="mw-bench-") as tmp, local_ray(cpus):
        work = pathlib.Path(tmp)
        idle_total, idle_workers = MemorySampler.sample()
        memory: list[tuple[Measure, MemorySampler]] = []
        cheap = [("cheap", int(n) or None) for n in args.stages.split(",")]
        runs = [("none", None, False)] + [(i, s, False) for i, s in cheap]
        runs += [(i, s, True) for i, s in cheap] if args.row_by_row else []
        for inline, stages, row_by_row in runs:
            for rows, label in ((small, "1x"), (texts, f"{args.scale}x")):
                measure, peaks = batch_run(spec, rows, work, label, inline=inline, batch_size=args.batch_size,
                                           stages=stages, row_by_row=row_by_row)
                measures.append(measure)
                memory.append((measure, peaks))
        measures += [online(spec, small[:args.online_rows], args.clients)] if args.online_rows else []
    second = naive_in_fresh_process(args)
    baseline_s = statistics.mean([first.seconds, second.seconds])
    base = Measure("(b) naive per-row loop", args.rows, baseline_s, first.failures,
                   f"mean of {first.rate:.0f} and {second.rate:.0f} rows/s (before/after)")
    report([base, *measures], base.rate)
    print(f"\nmemory, PSS of driver + local Ray processes (Ray workers alone in brackets):\n"
          f"  idle cluster before the jobs: {mib(idle_total)} ({mib(idle_workers)})")
    for measure, peaks in memory:
        print(f"  peak during {measure.name:<34} {measure.rows:>7} rows: {mib(peaks.peak_total):>10} "
              f"({mib(peaks.peak_workers)})")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
