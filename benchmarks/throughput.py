"""Online throughput per core of the triage graph under different deployment layouts, one run.

The same graph (``examples/triage.yaml``: same models, params and routing) is deployed in
turn under each layout and driven over HTTP:

* **per-model**: one Serve deployment per model node (``deployment.inline: false``
  everywhere): the layout before co-location, the baseline of every ratio;
* **default**: the file as it is: non-blocking rule nodes (the handoffs) run inside the
  ingress (``inline: auto``);
* **colocated**: the groups of ``examples/triage-colocated.yaml`` applied to the same
  graph (cheap preprocessing in one deployment, the TF-IDF classifier in a group of its own,
  heavy models on their own; grouped nodes drop their dynamic batching, which is per
  deployment);
* **ingress-only**: every model node inside the ingress (``inline: true``, keeping its
  in-process dynamic batching; its Serve settings dropped): no model hop at all, one process
  for every model, which then share its interpreter (GIL) and scale only with the ingress;
* **replicated**: ingress-only with one ingress replica per core (``ingress.num_replicas``):
  the whole graph in every replica process, so the models share no interpreter and still make
  no hop, at the memory of one more copy of every model per replica. Not run by default
  (``--layouts ...,replicated``): it is how far the monolith goes, not a layout the mission
  recommends where models need their own scaling or GPUs;
* **isolated** / **replicated-isolated**: ingress-only / replicated, except that the models the
  file gives a deployment of their own (spaCy's redactor, the fine-tuned MiniLM) run in child
  processes of each ingress replica (``deployment.inline: process``): no Serve hop, no
  interpreter shared with the ingress, a crash that restarts the child only. Not run by default;
* **scaled**: the file's own layout (as ``default``) with one ingress replica per core: the
  models inside the ingress get an interpreter per core, the heavy models keep their own
  deployments. Not run by default either.

For each layout: a warm-up, ``--sequential`` requests one at a time (p50 latency against
the p50 model CPU on the request's critical path: the sum of its model spans' ``cpuMs``, the
branches of a ``parallel`` node counting as the longest of them; and, per request, the median of
each request's latency over its own path's model CPU, since triage's short and long paths make
the two medians fall on different requests), then ``--clients`` closed-loop clients
for ``--duration`` seconds (req/s). Model CPU per request is the sum of the spans'
``cpuMs`` in the answers' traces; the CPU floor is ``cores x 1000 / model CPU ms`` (the
req/s if every core did nothing but model work) and efficiency is req/s over that floor.
Memory is the PSS of all Ray processes after the run (Linux ``/proc``); the CPU time each
Ray process spent during the concurrent phase, per answered request and grouped by role
(proxy, ingress, each replica, the state actor, the rest of Ray: ``process_cpu.py``), shows
where the CPU that is not the models' goes. Each layout gets its
own graph name (so its own cache and feedback state) and sees the same texts in the same
order. Run from the repository root (artifacts prepared: ``modelweave prepare
examples/triage.yaml``)::

    python benchmarks/throughput.py                       # 4 layouts, 16 clients, 40 s each
    python benchmarks/throughput.py --duration 15 --sequential 40 --layouts per-model,colocated
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from lean_http import LeanClient  # noqa: E402  (benchmarks/ is not a package)
from process_cpu import cpu_by_role, per_request_ms, snapshot  # noqa: E402
from throughput_batch import batch_job, batch_table, plain_loop  # noqa: E402

from modelweave.layout import every_model_in_the_ingress, model_node_dicts, set_ingress_replicas  # noqa: E402
from modelweave.ports import free_port  # noqa: E402
from modelweave.serving import apply_serve_env, direct_ingress_env, embedded_num_cpus  # noqa: E402
from modelweave.spec import parse_graph  # noqa: E402

LAYOUTS = ("per-model", "default", "colocated", "ingress-only")
#: Layouts that run only when asked for (``--layouts``).
EXTRA_LAYOUTS = ("replicated", "scaled", "isolated", "replicated-isolated")


def layout_graph(base: dict[str, Any], layout: str, groups: dict[str, str], transport: str = "grpc"
                 ) -> dict[str, Any]:
    """``base`` (plain data of a graph file) under ``layout``, named ``<name>-<layout>``.

    ``transport`` is the ingress's Serve transport to its model deployments (``ingress.transport``).
    """
    data = json.loads(json.dumps(base))
    if layout in ("ingress-only", "replicated"):  # what `modelweave run --profile replicated` does
        data = every_model_in_the_ingress(data, (os.cpu_count() or 1) if layout == "replicated" else None)
    elif layout in ("isolated", "replicated-isolated"):  # `--profile isolated` / `replicated-isolated`
        replicas = (os.cpu_count() or 1) if layout == "replicated-isolated" else None
        data = every_model_in_the_ingress(data, replicas, isolate=True)
    elif layout == "scaled":  # the file's own layout, one ingress replica per core
        set_ingress_replicas(data, os.cpu_count() or 1)
    data["name"] = f"{base['name']}-{layout}"
    data.setdefault("ingress", {})["transport"] = transport
    for node in model_node_dicts(data["flow"]):
        deployment = node.setdefault("deployment", {})
        if layout == "per-model":
            deployment["inline"] = False
            deployment.pop("group", None)
        elif layout == "colocated" and node["name"] in groups:
            deployment["group"] = groups[node["name"]]
            deployment.pop("inline", None)
            deployment.pop("batching", None)  # dynamic batching is per deployment
    return data


def groups_of(path: pathlib.Path) -> dict[str, str]:
    """Group per model node name in a graph file."""
    data = yaml.safe_load(path.read_text())
    return {n["name"]: n["deployment"]["group"] for n in model_node_dicts(data["flow"])
            if isinstance(n.get("deployment"), dict) and n["deployment"].get("group")}


@dataclass
class Result:
    """One layout's figures."""

    layout: str
    deployments: int
    inline: int
    serve_hops_max: int
    requests: int = 0
    errors: int = 0
    req_s: float = 0.0
    model_cpu_ms: float = 0.0
    floor_req_s: float = 0.0
    efficiency: float = 0.0
    p50_ms: float = 0.0
    p50_model_ms: float = 0.0
    latency_ratio: float = 0.0
    #: Median over the sequential requests of each one's latency over its own path's model CPU.
    #: Triage has a short path (handoff, ~5 ms of models) and a long one (answer, ~16 ms) in
    #: about equal shares, so the two medians of ``latency_ratio`` can fall on different requests.
    request_ratio: float = 0.0
    #: The same ratio per path (the model nodes a request ran) taken by at least a tenth of them.
    paths: list[dict[str, Any]] = field(default_factory=list)
    pss_mb: float = 0.0
    rss_mb: float = 0.0
    loadgen_cpu: float = 0.0
    #: Answers of the concurrent phase by HTTP status ("error" for a broken connection).
    statuses: dict[str, int] = field(default_factory=dict)
    #: CPU ms per answered request of each Ray process role (concurrent phase; ``process_cpu``).
    process_cpu_ms: dict[str, float] = field(default_factory=dict)
    #: Model CPU per answered request by node (concurrent phase).
    node_cpu_ms: dict[str, float] = field(default_factory=dict)
    #: Result JSON of every sequential request (warm-up included), for the parity check.
    answers: list[str] = field(default_factory=list)
    same_answers: str = ""


def model_ms(answer: dict[str, Any]) -> float:
    """Sum of the model spans' CPU milliseconds in one answer's trace."""
    return sum(float(s.get("cpuMs", 0.0)) for s in answer.get("trace", {}).get("spans", [])
               if s.get("kind") == "model")


def path_model_ms(answer: dict[str, Any]) -> float:
    """Model CPU milliseconds on the request's critical path: as :func:`model_ms`, except that
    the branches of a ``parallel`` node count as the longest of them (they run concurrently).

    This is the latency the models alone would need if every hop were free, so the latency
    ratio of a graph with concurrent branches is not flattered by summing work that overlapped.
    """
    spans = [(str(s.get("node", "")), s.get("kind"), float(s.get("cpuMs", 0.0)))
             for s in answer.get("trace", {}).get("spans", [])]
    parallels = {node for node, kind, _ in spans if kind == "parallel"}

    def within(node: str, scope: str) -> bool:
        return not scope or node == scope or node.startswith(scope + "/")

    def cost(scope: str) -> float:
        if scope in parallels:  # its branches ran concurrently: the longest counts
            branches = {node[len(scope) + 1:].split("/", 1)[0] for node, _, _ in spans
                        if node.startswith(scope + "/")}
            return max((cost(f"{scope}/{b}") for b in branches), default=0.0)
        inner = [q for q in parallels if within(q, scope)]
        top = [q for q in inner if not any(o != q and within(q, o) for o in inner)]
        return (sum(ms for node, kind, ms in spans if kind == "model" and within(node, scope)
                    and not any(within(node, q) for q in top))
                + sum(cost(q) for q in top))

    return cost("")


def node_ms(answer: dict[str, Any]) -> dict[str, float]:
    """CPU milliseconds of each model node in one answer's trace."""
    out: dict[str, float] = {}
    for s in answer.get("trace", {}).get("spans", []):
        if s.get("kind") == "model":
            name = str(s.get("node", "")).rsplit("/", 1)[-1]
            out[name] = out.get(name, 0.0) + float(s.get("cpuMs", 0.0))
    return out


def path_key(answer: dict[str, Any]) -> str:
    """The model nodes one answer's request ran, sorted: its path through the graph."""
    return " + ".join(sorted({str(s.get("node", "")).rsplit("/", 1)[-1]
                              for s in answer.get("trace", {}).get("spans", []) if s.get("kind") == "model"}))


@dataclass
class Sequential:
    """What the sequential phase measured, one entry per answered request (answers: every request)."""

    latencies: list[float] = field(default_factory=list)
    models: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)


async def sequential(client: LeanClient, texts: Iterator[str], n: int) -> Sequential:
    """Latency, model milliseconds, path and answer (result JSON) of ``n`` requests sent one at a time."""
    out = Sequential()
    for _ in range(n):
        start = time.monotonic()
        r = await client.post_json({"input": {"text": {"content": next(texts)}}}, 60)
        if r.status == 200:
            out.latencies.append((time.monotonic() - start) * 1000)
            out.models.append(path_model_ms(r.json()))
            out.paths.append(path_key(r.json()))
        out.answers.append(json.dumps(r.json().get("result") if r.status == 200 else r.status, sort_keys=True))
    return out


def path_ratios(seq: Sequential, min_share: float = 0.1) -> list[dict[str, Any]]:
    """p50 latency over p50 model time of each path taken by at least ``min_share`` of the requests."""
    out = []
    for path in sorted(set(seq.paths), key=seq.paths.count, reverse=True):
        picked = [i for i, p in enumerate(seq.paths) if p == path]
        if len(picked) < min_share * len(seq.paths):
            continue
        lat = statistics.median(seq.latencies[i] for i in picked)
        model = statistics.median(seq.models[i] for i in picked)
        out.append({"path": path, "requests": len(picked), "p50_ms": round(lat, 2), "p50_model_ms": round(model, 2),
                    "ratio": round(lat / model, 3) if model else float("nan")})
    return out


async def concurrent(url: str, texts: Iterator[str], clients: int, duration_s: float,
                     statuses: dict[str, int], nodes: dict[str, float]) -> tuple[int, int, list[float]]:
    """Closed-loop load; returns (answered, errors, model ms per answer).

    Counts answers by status in ``statuses`` and sums model CPU by node in ``nodes``.
    """
    pool = LeanClient(url)
    until = time.monotonic() + duration_s
    ok, errors, models = 0, 0, []

    async def one() -> None:
        nonlocal ok, errors
        while time.monotonic() < until:
            try:
                r = await pool.post_json({"input": {"text": {"content": next(texts)}}}, 60)
            except (OSError, TimeoutError, ValueError):
                errors += 1
                statuses["error"] = statuses.get("error", 0) + 1
                continue
            statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
            if r.status == 200:
                ok += 1
                answer = r.json()
                models.append(model_ms(answer))
                for name, ms in node_ms(answer).items():
                    nodes[name] = nodes.get(name, 0.0) + ms
            else:
                errors += 1
                await asyncio.sleep(0.05)

    await asyncio.gather(*(one() for _ in range(clients)))
    await pool.aclose()
    return ok, errors, models


def ray_memory_mb() -> tuple[float, float]:
    """(PSS, RSS) summed over this run's Ray processes (GCS, raylet, workers: all descendants
    of this driver), in MB.

    PSS counts pages shared between replicas (libraries, copy-on-write) once; RSS counts them
    in every process (what ``ps`` and most dashboards add up). Other Ray clusters on the
    machine are not descendants, so they are not counted.
    """
    import psutil

    totals = {"Pss:": 0, "Rss:": 0}
    for proc in psutil.Process().children(recursive=True):
        try:
            for line in pathlib.Path(f"/proc/{proc.pid}/smaps_rollup").read_text().splitlines():
                key = line.split(" ", 1)[0]
                if key in totals:
                    totals[key] += int(line.split()[1])
        except OSError:
            continue
    return totals["Pss:"] / 1024, totals["Rss:"] / 1024


def texts_from(pool: Sequence[str]) -> Iterator[str]:
    """Unique texts forever (a suffix per lap keeps the cache from answering repeats)."""
    lap = 0
    while True:
        for text in pool:
            yield text if lap == 0 else f"{text} ({lap})"
        lap += 1


async def measure(name: str, url: str, texts: list[str], opts: argparse.Namespace,
                  result: Result) -> tuple[Any, ...]:
    """Warm-up, sequential and concurrent phases against one deployed graph."""
    client = LeanClient(url)
    stream = texts_from(texts)
    warm = await sequential(client, stream, opts.warmup)
    seq = await sequential(client, stream, opts.sequential)
    await client.aclose()
    cpu0, t0, before = time.process_time(), time.monotonic(), snapshot()
    ok, errors, models = await concurrent(url, stream, opts.clients, opts.duration, result.statuses,
                                          result.node_cpu_ms)
    result.process_cpu_ms = per_request_ms(cpu_by_role(before, snapshot()), ok)
    loadgen = (time.process_time() - cpu0) / (time.monotonic() - t0)
    return seq, warm.answers + seq.answers, ok, errors, models, loadgen


def run_layout(layout: str, data: dict[str, Any], http: str, texts: list[str], opts: argparse.Namespace) -> Result:
    """Deploys ``data``, measures it and deletes it."""
    from ray import serve

    from deployments.app import graph_app
    from modelweave.checker import check_graph
    from modelweave.layout import hop_paths
    from modelweave.spec import parse_graph

    spec = parse_graph(data, layout)
    checked = check_graph(spec)
    result = Result(layout, len(checked.layout.deployments), len(checked.layout.inline),
                    max(p.serve_hops for p in hop_paths(checked)))
    print(f"[{layout}] deploying {result.deployments} model deployments ...", flush=True)
    serve.run(graph_app(spec), name=spec.name, route_prefix=f"/{spec.name}")
    try:
        seq, result.answers, ok, errors, models, loadgen = asyncio.run(
            measure(spec.name, f"{http}/{spec.name}", texts, opts, result))
        result.pss_mb, result.rss_mb = ray_memory_mb()
    finally:
        serve.delete(spec.name)
    cores = os.cpu_count() or 1
    result.requests, result.errors, result.loadgen_cpu = ok, errors, loadgen
    result.req_s = ok / opts.duration
    result.model_cpu_ms = statistics.fmean(models) if models else float("nan")
    result.node_cpu_ms = {k: round(v / max(ok, 1), 3) for k, v in sorted(result.node_cpu_ms.items())}
    result.floor_req_s = cores * 1000 / result.model_cpu_ms if models else float("nan")
    result.efficiency = result.req_s / result.floor_req_s if models else float("nan")
    if seq.latencies:
        result.p50_ms = statistics.median(seq.latencies)
        result.p50_model_ms = statistics.median(seq.models)
        result.latency_ratio = result.p50_ms / result.p50_model_ms if result.p50_model_ms else float("nan")
        own = [lat / model for lat, model in zip(seq.latencies, seq.models, strict=True) if model > 0]
        result.request_ratio = statistics.median(own) if own else float("nan")
        result.paths = path_ratios(seq)
    print(f"[{layout}] {result.req_s:.1f} req/s, efficiency {result.efficiency:.0%}, p50 {result.p50_ms:.1f} ms",
          flush=True)
    return result


def table(results: list[Result], cores: int) -> str:
    """Markdown table with ratios against the first layout (measured in the same run)."""
    base = results[0]
    lines = [f"| layout | model deployments | in ingress | max Serve hops | req/s ({cores} cores) | "
             f"vs {base.layout} | model CPU ms/req | CPU floor req/s | efficiency | p50 ms | p50 model ms | "
             f"p50 / model | per request: p50 of latency / own model | vs {base.layout} | Ray PSS / RSS MB | "
             "errors | same answers |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r.layout} | {r.deployments} | {r.inline} | {r.serve_hops_max} | {r.req_s:.1f} | "
            f"{r.req_s / base.req_s:.2f}x | {r.model_cpu_ms:.1f} | {r.floor_req_s:.0f} | {r.efficiency:.0%} | "
            f"{r.p50_ms:.1f} | {r.p50_model_ms:.1f} | {r.latency_ratio:.2f}x | {r.request_ratio:.2f}x | "
            f"{r.p50_ms / base.p50_ms:.2f}x | "
            f"{r.pss_mb:,.0f} / {r.rss_mb:,.0f} | {r.errors} | {r.same_answers} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--graph", default=str(REPO / "examples" / "triage.yaml"))
    p.add_argument("--groups-from", default=str(REPO / "examples" / "triage-colocated.yaml"))
    p.add_argument("--layouts", default=",".join(LAYOUTS),
                   help=f"comma-separated, from {', '.join(LAYOUTS + EXTRA_LAYOUTS)}; the first is the baseline")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=40.0, help="seconds of concurrent load per layout")
    p.add_argument("--sequential", type=int, default=80, help="sequential requests per layout")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--texts", type=int, default=4000, help="distinct held-out texts to draw from")
    p.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of the local Ray (more than cores is fine)")
    p.add_argument("--batch-rows", type=int, default=2000, help="held-out texts for the batch job (0: skip)")
    p.add_argument("--loop-rows", type=int, default=300, help="texts for the plain loop baseline (0: skip)")
    p.add_argument("--batch-row-by-row", action="store_true",
                   help="also run the batch job with its stages row by row (columnar is the default)")
    p.add_argument("--transport", choices=("grpc", "actor"), default="grpc",
                   help="Serve's transport, proxy -> ingress (RAY_SERVE_PROXY_USE_GRPC) and ingress -> models "
                        "(ingress.transport): gRPC (modelweave's default) or Ray actor calls (Serve's)")
    p.add_argument("--direct-ingress", action="store_true",
                   help="clients call the ingress replicas' own HTTP servers (sharing one port), not Serve's proxy "
                        "(modelweave run --direct-ingress); layouts run one after another on the same port")
    p.add_argument("--out", default=str(HERE / "results" / "throughput.json"))
    opts = p.parse_args(argv)
    unknown = [name for name in opts.layouts.split(",") if name not in LAYOUTS + EXTRA_LAYOUTS]
    if unknown:
        p.error(f"unknown layout(s) {', '.join(unknown)}")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    """Runs every layout on one local Ray and prints the table."""
    opts = parse_args(argv)
    import ray
    from ray import serve

    from modelweave.apps.triage import data as triage_data

    base = yaml.safe_load(pathlib.Path(opts.graph).read_text())
    groups = groups_of(pathlib.Path(opts.groups_from))
    texts = triage_data.held_out_mix(("test",), opts.texts)
    port = proxy_port = free_port()
    # Read by Serve's proxy when Ray starts; the graphs carry the ingress's half (layout_graph).
    # An explicit RAY_SERVE_PROXY_USE_GRPC wins (to measure the two halves apart).
    os.environ.setdefault("RAY_SERVE_PROXY_USE_GRPC", "1" if opts.transport == "grpc" else "0")
    apply_serve_env()
    if opts.direct_ingress:  # as `modelweave run --direct-ingress`: clients reach the ingress replica itself
        port = free_port()
        # Every ingress replica of every layout binds these two ports (the kernel spreads the clients'
        # connections over them); the ranges need a slot per replica of the most replicated layout.
        replicas = max(parse_graph(layout_graph(base, layout, groups), layout).ingress.most_replicas()
                       for layout in opts.layouts.split(","))
        os.environ.update(direct_ingress_env(port, free_port(), replicas))
    ray.init(address="local", num_cpus=opts.num_cpus, include_dashboard=False, log_to_driver=False,
             namespace="modelweave-throughput")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": proxy_port})
        results = [run_layout(layout, layout_graph(base, layout, groups, opts.transport), f"http://127.0.0.1:{port}",
                              texts, opts)
                   for layout in opts.layouts.split(",")]
        serve.shutdown()  # frees the replicas' CPUs for the batch job's pools
        batch = run_batch(base, texts, opts)
    finally:
        ray.shutdown()
    cores = os.cpu_count() or 1
    for r in results:  # same texts in the same order: every layout must answer alike
        same = sum(a == b for a, b in zip(r.answers, results[0].answers, strict=False))
        r.same_answers = f"{same}/{len(results[0].answers)}"
    print()
    print(f"{pathlib.Path(opts.graph).name}, {opts.clients} clients x {opts.duration:.0f} s, {cores} cores, "
          f"Serve transport {opts.transport}{', direct ingress' if opts.direct_ingress else ''}, "
          f"load average before the run {os.getloadavg()[0]:.1f}")
    print(table(results, cores))
    for r in results:
        nodes = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r.node_cpu_ms.items(), key=lambda kv: -kv[1]))
        print(f"{r.layout}: answers by status {r.statuses}; model CPU ms per request by node: {nodes}")
    print("\nSequential p50 over the model time on the path, per path taken by a tenth of the requests or more:")
    for r in results:
        for path in r.paths:
            print(f"{r.layout}: {path['ratio']:.2f}x ({path['p50_ms']:.1f} / {path['p50_model_ms']:.1f} ms, "
                  f"{path['requests']} requests): {path['path']}")
    print("\nCPU ms per answered request by process (concurrent phase, all Ray processes of this run; "
          "inline models count in the ingress):")
    for r in results:
        roles = ", ".join(f"{k} {v:.1f}" for k, v in r.process_cpu_ms.items())
        print(f"{r.layout}: total {sum(r.process_cpu_ms.values()):.1f} (models {r.model_cpu_ms:.1f}): {roles}")
    online = next((r for r in results if r.layout == "default"), results[0])
    if batch:
        print(f"\nbatch path ({online.layout} layout's online model CPU per request for the single-request floor):")
        print(batch_table(batch, online.model_cpu_ms))
    pathlib.Path(opts.out).write_text(json.dumps(
        {"graph": opts.graph, "cores": cores, "clients": opts.clients, "duration_s": opts.duration,
         "transport": opts.transport, "direct_ingress": opts.direct_ingress,
         "results": [{k: v for k, v in asdict(r).items() if k != "answers"} for r in results],
         "batch": [{**asdict(b), "rows_s": b.rows_s} for b in batch]}, indent=2))
    return 0


def run_batch(base: dict[str, Any], texts: list[str], opts: argparse.Namespace) -> list[Any]:
    """The batch job and the plain loop over held-out texts (unique: the cache cannot help)."""
    from modelweave.batch.job import default_stage_count
    from modelweave.spec import parse_graph

    spec = parse_graph(layout_graph(base, "batch", {}), "batch")
    # The stages `modelweave batch` gives this machine (its Ray declares max(4, cores) CPUs); this
    # benchmark's Ray declares --num-cpus for the layouts, 8 by default: four stages on 2 cores.
    stages = default_stage_count(spec, embedded_num_cpus())
    out = []
    if opts.batch_rows:
        print(f"[batch] {opts.batch_rows} rows through a Ray Data job ({stages} graph stages) ...", flush=True)
        out.append(batch_job(spec, texts[:opts.batch_rows], concurrency=stages))
        if opts.batch_row_by_row:
            print(f"[batch] {opts.batch_rows} rows through a Ray Data job, row by row ...", flush=True)
            out.append(batch_job(spec, texts[:opts.batch_rows], row_by_row=True, concurrency=stages))
    if opts.loop_rows:
        print(f"[batch] {opts.loop_rows} rows through a plain loop ...", flush=True)
        out.append(plain_loop(spec, texts[:opts.loop_rows]))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
