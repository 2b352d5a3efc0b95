"""modelweave's overhead versus hand-written Ray Serve composition, on one local Ray cluster.

Both sides run the same trivial model (append one character to ``Text.content``) as a
chain of N deployments behind an ingress deployment, with identical Serve options
(``max_ongoing_requests=64``, ``num_cpus=0.1``, same logging config):

* **modelweave**: ``graph_app(spec)`` of a chain graph of N model nodes (``AppendChar``,
  a non-blocking ``ModelAdapter``), called via HTTP (``POST /<graph>``) and via the
  ingress handle (``Infer``).
* **hand-written**: N plain ``@serve.deployment`` classes and an ingress deployment that
  awaits their handles one after another, called the same two ways.

For each N the two apps are deployed side by side and measured in alternating rounds
(so drift on a shared machine hits both), first with one sequential client (p50/p99
latency) and then with concurrent clients (throughput). Run from the repository root::

    python benchmarks/overhead.py                     # N = 1, 2, 4; HTTP and handle paths
    python benchmarks/overhead.py --profile /tmp/prof # plus py-spy profiles of the ingresses

See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from google.protobuf.message import Message as ProtoMessage
from process_cpu import process_role, ray_processes  # benchmarks/: this file's folder, first on sys.path
from starlette.requests import Request
from starlette.responses import Response

from modelweave.adapters.base import ModelAdapter
from modelweave.ports import free_port
from modelweave.serving import apply_serve_env
from modelweave.spec import DeploymentSettings
from modelweave.v1 import messages_pb2 as pb

HERE = pathlib.Path(__file__).resolve().parent
#: Importable name of this file inside Ray workers (``HERE`` is put on their PYTHONPATH).
MODULE = "overhead"
INPUT_TEXT = "hello modelweave"
MAX_ONGOING = 64
NUM_CPUS = 0.1
#: Ingress settings of both apps. Admission control lets every call the hand-written app would
#: take straight through (max_ongoing_requests in flight, none queued), so both do the same work.
INGRESS = {"max_ongoing_requests": MAX_ONGOING, "ray_actor_options": {"num_cpus": NUM_CPUS},
           "admission": {"max_concurrent": MAX_ONGOING, "max_queued": 0}, "transport": "grpc"}


# -- the trivial model, shared by both sides -------------------------------------------


def append_char(message: pb.Message) -> pb.Text:
    """The model's whole work: the input text with one character appended."""
    return pb.Text(content=message.text.content + "x", language=message.text.language)


class AppendChar(ModelAdapter):
    """A non-blocking adapter running :func:`append_char` (no thread hop, no batching)."""

    consumes: ClassVar[tuple[str, ...]] = ("Text",)
    produces: ClassVar[str] = "Text"
    blocking: ClassVar[bool] = False

    def predict(self, batch: Sequence[pb.Message]) -> list[ProtoMessage]:
        """One appended ``Text`` per envelope."""
        return [append_char(m) for m in batch]


class HandStep:
    """Hand-written model deployment: the same work as ``AppendChar``, no wrapper.

    Args:
        nice: Process priority, the one modelweave's model replicas get (``deployment.nice``):
            under saturation a lower priority changes how the replicas and the ingress share
            the cores, so both sides must run with the same.
    """

    def __init__(self, nice: int = 0) -> None:
        from modelweave.process_isolation import lower_cpu_priority

        lower_cpu_priority(nice)

    async def __call__(self, message: pb.Message) -> pb.Text:
        """Answers one envelope with the produced ``Text``."""
        return append_char(message)


class HandIngress:
    """Hand-written ingress: parses the same JSON, awaits each step's handle in turn.

    Args:
        steps: Deployment handles of the chain, in order.
    """

    def __init__(self, steps: list[Any], transport: str = "actor") -> None:
        # The same inter-deployment transport as modelweave's ingress (``ingress.transport``).
        self.steps = [step.options(_by_reference=transport == "actor") for step in steps]

    async def _chain(self, message: pb.Message) -> pb.Message:
        for step in self.steps:
            message.text.CopyFrom(await step.remote(message))
        return message

    async def __call__(self, request: Request) -> Response:
        """HTTP: ``{"input": {"text": {"content": ...}}}`` -> ``{"result": {"text": {"content": ...}}}``."""
        data = json.loads(await request.body())
        message = pb.Message(text=pb.Text(content=data["input"]["text"]["content"]))
        out = await self._chain(message)
        body = json.dumps({"result": {"text": {"content": out.text.content}}}).encode()
        return Response(body, media_type="application/json")

    async def infer(self, message: pb.Message) -> pb.Message:
        """Handle path: envelope in, envelope out."""
        return await self._chain(message)


# -- apps ---------------------------------------------------------------------------------


def mw_name(n: int) -> str:
    """Application (and graph) name of the modelweave chain of ``n`` nodes."""
    return f"ovh-mw{n}"


def hw_name(n: int) -> str:
    """Application name of the hand-written chain of ``n`` deployments."""
    return f"ovh-hw{n}"


def chain_spec(n: int, nice: int) -> dict[str, Any]:
    """A modelweave graph: a chain of ``n`` ``AppendChar`` model nodes at priority ``nice``."""
    settings = {"max_ongoing_requests": MAX_ONGOING, "ray_actor_options": {"num_cpus": NUM_CPUS}, "nice": nice}
    return {
        "name": mw_name(n),
        "input": ["Text"],
        "output": ["Text"],
        "ingress": INGRESS,
        "flow": {
            "kind": "chain",
            "name": "main",
            "steps": [
                # inline: false: the same layout as the hand-written app (a rule-like model would
                # otherwise run inside the ingress, which is not what this benchmark compares).
                {"kind": "model", "name": f"step{i}", "impl": f"{MODULE}:AppendChar",
                 "deployment": {**settings, "inline": False}}
                for i in range(n)
            ],
        },
    }


def modelweave_app(n: int, nice: int) -> Any:
    """The modelweave Serve application of :func:`chain_spec`."""
    from deployments.app import graph_app
    from modelweave.spec import parse_graph

    return graph_app(parse_graph(chain_spec(n, nice), "benchmark"))


def hand_app(n: int, nice: int) -> Any:
    """The hand-written application, with exactly the options modelweave gives its deployments."""
    from ray import serve

    from deployments.app import deployment_options
    from modelweave.spec import IngressSettings

    step_opts = deployment_options(DeploymentSettings.model_validate(
        {"max_ongoing_requests": MAX_ONGOING, "ray_actor_options": {"num_cpus": NUM_CPUS}}))
    ingress_opts = deployment_options(IngressSettings.model_validate(INGRESS))
    steps = [serve.deployment(HandStep).options(name=f"step{i}", **step_opts).bind(nice) for i in range(n)]
    return serve.deployment(HandIngress).options(name="Ingress", **ingress_opts).bind(steps, INGRESS["transport"])


class NoGrpcContext:
    """What ``Infer`` reads of Serve's gRPC context, for calls through the handle (no proxy):
    no metadata (no token, no trace context); codes and trailers are dropped."""

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return []

    def set_code(self, code: Any) -> None:
        pass

    def set_details(self, details: str) -> None:
        pass

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass


# -- load generation -----------------------------------------------------------------------


@dataclass
class Sample:
    """Latencies (seconds) of one measured phase and its wall time."""

    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    #: CPU seconds (user + system) spent by each role's processes during the phase.
    cpu_s: dict[str, float] = field(default_factory=dict)
    #: Each merged round on its own (requests, CPU seconds by role), for the per-round spread.
    rounds: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    def extend(self, other: Sample) -> None:
        """Merges another round of the same phase."""
        self.latencies.extend(other.latencies)
        self.wall_s += other.wall_s
        for role, seconds in other.cpu_s.items():
            self.cpu_s[role] = self.cpu_s.get(role, 0.0) + seconds
        self.rounds.append((len(other.latencies), dict(other.cpu_s)))

    def round_cpu_us(self, *roles: str) -> list[float]:
        """:meth:`cpu_us` of each merged round, in order."""
        return [_per_request_us(cpu_s, requests, roles) for requests, cpu_s in self.rounds]

    def cpu_us(self, *roles: str) -> float:
        """CPU microseconds per request spent by ``roles`` (all roles when none given)."""
        return _per_request_us(self.cpu_s, len(self.latencies), roles)

    def pct_ms(self, q: float) -> float:
        """The ``q``-quantile latency in milliseconds (nearest rank)."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0

    def rps(self) -> float:
        """Completed requests per second of wall time."""
        return len(self.latencies) / self.wall_s if self.wall_s else 0.0


def _per_request_us(cpu_s: dict[str, float], requests: int, roles: tuple[str, ...]) -> float:
    """CPU microseconds per request of ``roles`` (all roles when empty) in ``cpu_s``."""
    if not requests:
        return 0.0
    return sum(cpu_s.get(r, 0.0) for r in roles or tuple(cpu_s)) / requests * 1e6


Call = Callable[[], Awaitable[None]]


async def drive(call: Call, total: int, concurrency: int) -> Sample:
    """Sends ``total`` requests with ``concurrency`` workers; each request is ``await call()``."""
    sample = Sample()
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            await call()
            sample.latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    sample.wall_s = time.perf_counter() - start
    return sample


def expected_text(n: int) -> str:
    """What a chain of ``n`` steps returns for :data:`INPUT_TEXT`."""
    return INPUT_TEXT + "x" * n


class Target:
    """One app reachable over HTTP and through its ingress handle."""

    def __init__(self, kind: str, n: int, http_base: str) -> None:
        from ray import serve

        self.kind, self.n = kind, n
        name = mw_name(n) if kind == "modelweave" else hw_name(n)
        self.url = f"{http_base}/{name}"
        self.handle = serve.get_app_handle(name).options(_by_reference=INGRESS["transport"] == "actor")
        self.body = json.dumps({"input": {"text": {"content": INPUT_TEXT}}}).encode()
        self.expected = expected_text(n)
        self.processes = serve_processes(name, n)

    def cpu_snapshot(self) -> dict[str, float]:
        """CPU seconds used so far by this app's processes, the proxy and this driver, by role."""
        out: dict[str, float] = {}
        for role, procs in self.processes.items():
            total = 0.0
            for proc in procs:
                try:
                    t = proc.cpu_times()
                except Exception:  # a replica restarted: its CPU is simply not counted
                    continue
                total += t.user + t.system
            out[role] = total
        return out

    def http_call(self, client: Any) -> Call:
        """A request over Serve's HTTP proxy (status checked, body parsed only on warm-up)."""

        async def call() -> None:
            r = await client.post(self.url, content=self.body, headers={"content-type": "application/json"})
            if r.status_code != 200:
                raise RuntimeError(f"{self.kind} N={self.n}: HTTP {r.status_code}: {r.text[:300]}")

        return call

    def handle_call(self) -> Call:
        """A request through the ingress deployment handle (no proxy)."""
        if self.kind == "modelweave":
            from modelweave.v1 import service_pb2 as svc

            request = svc.InferRequest(input=pb.Message(text=pb.Text(content=INPUT_TEXT)), request_id="bench")

            async def call() -> None:
                await self.handle.Infer.remote(request, NoGrpcContext())
        else:
            message = pb.Message(text=pb.Text(content=INPUT_TEXT))

            async def call() -> None:
                await self.handle.infer.remote(message)

        return call

    async def verify(self, client: Any) -> None:
        """Checks both paths return the chain's result before anything is timed."""
        r = await client.post(self.url, content=self.body, headers={"content-type": "application/json"})
        r.raise_for_status()
        got = r.json()["result"]["text"]["content"]
        if got != self.expected:
            raise RuntimeError(f"{self.kind} N={self.n} over HTTP returned {got!r}, expected {self.expected!r}")
        if self.kind == "modelweave":
            from modelweave.v1 import service_pb2 as svc

            resp = await self.handle.Infer.remote(
                svc.InferRequest(input=pb.Message(text=pb.Text(content=INPUT_TEXT)), request_id="bench"),
                NoGrpcContext())
            got = resp.result.text.content
        else:
            got = (await self.handle.infer.remote(pb.Message(text=pb.Text(content=INPUT_TEXT)))).text.content
        if got != self.expected:
            raise RuntimeError(f"{self.kind} N={self.n} via handle returned {got!r}, expected {self.expected!r}")


@dataclass
class Options:
    """Benchmark sizes."""

    sizes: list[int]
    sequential: int
    concurrent: int
    concurrency: int
    warmup: int
    rounds: int
    paths: list[str]


Key = tuple[str, int, str, str]  # (path, n, phase, kind)


async def measure(n: int, http_base: str, opts: Options, results: dict[Key, Sample]) -> None:
    """Measures both apps of size ``n`` in alternating rounds, for each path and phase."""
    import httpx

    targets = [Target("hand-written", n, http_base), Target("modelweave", n, http_base)]
    by_kind = {t.kind: t for t in targets}
    limits = httpx.Limits(max_connections=opts.concurrency * 2, max_keepalive_connections=opts.concurrency * 2)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
        for t in targets:
            await t.verify(client)
        for path in opts.paths:
            calls = {t.kind: (t.http_call(client) if path == "http" else t.handle_call()) for t in targets}
            for call in calls.values():  # warm-up: connections, handle routers, code paths
                await drive(call, opts.warmup, 1)
                await drive(call, opts.warmup * 4, opts.concurrency)
            for phase, total, conc in (("seq", opts.sequential, 1), ("conc", opts.concurrent, opts.concurrency)):
                per_round = max(1, total // opts.rounds)
                for r in range(opts.rounds):
                    # Alternate which side goes first, so slow drift does not favour one.
                    order = list(calls.items()) if r % 2 == 0 else list(reversed(calls.items()))
                    for kind, call in order:
                        before = by_kind[kind].cpu_snapshot()
                        sample = await drive(call, per_round, conc)
                        after = by_kind[kind].cpu_snapshot()
                        sample.cpu_s = {role: after[role] - before[role] for role in after}
                        results.setdefault((path, n, phase, kind), Sample()).extend(sample)


# -- in-process cost of the modelweave ingress code (no Ray) -------------------------------


def inprocess_cost_us(n: int, sink: Any = None, iterations: int = 2000) -> dict[str, float]:
    """CPU microseconds per request that modelweave's ingress code spends outside Ray, by stage.

    Runs the real codecs, executor and trace metrics with a caller that answers
    instantly, so the numbers are modelweave's own CPU per request on the ingress
    replica (thread CPU time, so other load on the machine does not count).

    Args:
        n: Chain length.
        sink: A ``RayMetricsSink`` (needs ``ray.init``); None skips the metrics stage.
        iterations: Repetitions per stage.
    """
    from modelweave.checker import check_graph
    from modelweave.codecs import check_request, parse_infer_json, to_json
    from modelweave.executor import Executor
    from modelweave.spec import ModelNode, parse_graph
    from modelweave.v1 import service_pb2 as svc

    spec = parse_graph(chain_spec(n, DeploymentSettings().nice), "benchmark")
    graph = check_graph(spec)

    class InstantCaller:
        async def call(self, model: ModelNode, message: pb.Message) -> ProtoMessage:
            return append_char(message)

    executor = Executor(graph, InstantCaller())
    body = json.dumps({"input": {"text": {"content": INPUT_TEXT}}}).encode()
    out: dict[str, float] = {}

    def per_request(start: float) -> float:
        return (time.thread_time() - start) / iterations * 1e6

    start = time.thread_time()
    for _ in range(iterations):
        request = parse_infer_json(body, spec.limits)
        check_request(request, spec.limits)
    out["parse+check JSON request"] = per_request(start)

    async def run_many() -> svc.InferResponse:
        response = svc.InferResponse()
        for _ in range(iterations):
            result = await executor.run(request.input, request_id="bench")
            response = svc.InferResponse(result=result.message, trace=result.trace, graph=spec.name)
        return response

    start = time.thread_time()
    response = asyncio.run(run_many())
    out[f"executor.run, {n} instant hop(s)"] = per_request(start)

    if sink is not None:
        from modelweave.observe import TraceMetrics

        metrics = TraceMetrics(graph, sink)
        start = time.thread_time()
        for _ in range(iterations):
            metrics.record(response.trace, status="OK", latency_ms=1.0)
        out["TraceMetrics.record (ray.util.metrics)"] = per_request(start)

    start = time.thread_time()
    for _ in range(iterations):
        to_json(response)
    out["to_json(InferResponse)"] = per_request(start)

    start = time.thread_time()
    for _ in range(iterations):
        data = json.loads(body)
        message = pb.Message(text=pb.Text(content=data["input"]["text"]["content"]))
        json.dumps({"result": {"text": {"content": message.text.content}}}).encode()
    out["hand-written: json.loads + json.dumps"] = per_request(start)
    return out


# -- profiling --------------------------------------------------------------------------------


def replica_pids(app: str, deployment: str) -> list[int]:
    """PIDs of this driver's Ray workers serving ``app``'s ``deployment`` (by process title)."""
    title = f"ServeReplica:{app}:{deployment}"
    return [proc.pid for proc, cmdline in ray_processes() if title in cmdline]


def serve_processes(app: str, n: int) -> dict[str, list[Any]]:
    """``psutil.Process`` objects of an app's replicas, the proxy and this driver, by role."""
    import psutil

    def procs(pids: list[int]) -> list[Any]:
        return [psutil.Process(pid) for pid in pids]

    steps: list[int] = []
    for i in range(n):
        steps.extend(replica_pids(app, f"step{i}"))
    return {
        "proxy": procs(proxy_pids()),
        "ingress": procs(replica_pids(app, "Ingress")),
        "models": procs(steps),
        "driver": [psutil.Process(os.getpid())],
    }


def proxy_pids() -> list[int]:
    """PIDs of this driver's Serve proxy actors."""
    return [proc.pid for proc, cmdline in ray_processes() if process_role(cmdline) == "HTTP proxy"]


_IDLE_LEAVES = ("select (selectors", "epoll", "poll (", "wait (threading", "_wait_once")
_USER_CODE = ("modelweave/", "deployments/", "overhead.py")


def summarize_profile(path: pathlib.Path, requests: int, top: int = 12) -> list[str]:
    """Inclusive busy samples per request and function, from a py-spy ``--format raw`` file.

    Idle samples (event loops waiting in ``select``/``epoll``, parked threads) are dropped.
    py-spy samples wall-clock stacks, so on a loaded machine a runnable thread waiting
    for a core still counts: compare the two sides' numbers, not absolute values.
    Lists the busiest Ray/Serve functions, then the user code (modelweave or the
    hand-written classes) with what it calls.
    """
    inclusive: collections.Counter[str] = collections.Counter()
    busy = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") and ":" in f else f for f in stack.split(";")]
        if any(idle in frames[-1] for idle in _IDLE_LEAVES):
            continue
        count = int(count_s)
        busy += count
        for name in set(frames):
            inclusive[name] += count
    if not busy or not requests:
        return ["  (no busy samples)"]
    rows = [f"  busy samples per request: {busy / requests:.2f} (at 250 Hz: 4 ms each)"]
    framework = [(n, c) for n, c in inclusive.most_common() if "ray/" in n or "starlette" in n or "uvicorn" in n]
    rows.append("  framework (inclusive samples/request):")
    rows += [f"    {c / requests:6.3f}  {n[:140]}" for n, c in framework[:8]]
    user = [(n, c) for n, c in inclusive.most_common() if any(k in n for k in _USER_CODE)]
    rows.append("  user code (inclusive samples/request):")
    rows += [f"    {c / requests:6.3f}  {n[:140]}" for n, c in user[:top]]
    return rows


async def profile_run(n: int, http_base: str, opts: Options, out_dir: pathlib.Path, duration_s: int) -> list[str]:
    """py-spy records each ingress replica and the proxy while concurrent HTTP load runs."""
    import httpx

    # The virtualenv's bin folder is often not on PATH (``.venv/bin/python benchmarks/...``).
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    if py_spy is None:
        return ["py-spy not found: pip install py-spy"]
    out_dir.mkdir(parents=True, exist_ok=True)
    report = []
    for kind, app in (("modelweave", mw_name(n)), ("hand-written", hw_name(n))):
        target = Target(kind, n, http_base)
        pids = {"ingress": replica_pids(app, "Ingress"), "step0": replica_pids(app, "step0"),
                "proxy": proxy_pids()}
        procs = []
        files = {}
        for role, found in pids.items():
            if not found:
                report.append(f"{kind}: no {role} process found")
                continue
            files[role] = out_dir / f"{app}-{role}.txt"
            procs.append(subprocess.Popen(
                [py_spy, "record", "--pid", str(found[0]), "--duration", str(duration_s), "--rate", "250",
                 "--format", "raw", "--nonblocking", "--output", str(files[role])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        limits = httpx.Limits(max_connections=opts.concurrency * 2)
        async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
            call = target.http_call(client)
            deadline = time.monotonic() + duration_s
            done = 0
            while time.monotonic() < deadline:
                await drive(call, opts.concurrency * 8, opts.concurrency)
                done += opts.concurrency * 8
        for proc in procs:
            await asyncio.to_thread(proc.wait, 60)
        report.append(f"== {kind} N={n}: {done} requests during {duration_s} s of profiling ==")
        for role, path in files.items():
            report.append(f"-- {role} ({path})")
            report.extend(summarize_profile(path, done) if path.exists() else ["  (py-spy wrote nothing)"])
    return report


# -- report -----------------------------------------------------------------------------------


def table(results: dict[Key, Sample], opts: Options) -> str:
    """The results as a fixed-width table with modelweave/hand-written ratios."""
    header = f"{'path':<7}{'N':>3}  {'metric':<26}{'hand-written':>13}{'modelweave':>12}{'mw/hw':>8}  rounds mw/hw"
    lines = [header, "-" * len(header)]
    ingress, serve = ("ingress",), ("proxy", "ingress", "models")
    # (phase, label, value, roles of a CPU row). CPU rows also show the lowest and highest ratio
    # of one round against the other side's round run next to it: how far the machine moved the
    # ratio within this run.
    metrics: list[tuple[str, str, Callable[[Sample], float], tuple[str, ...] | None]] = [
        ("seq", "seq p50 (ms)", lambda s: s.pct_ms(0.50), None),
        ("seq", "seq p99 (ms)", lambda s: s.pct_ms(0.99), None),
        ("conc", f"{opts.concurrency} conc req/s", Sample.rps, None),
        ("conc", f"{opts.concurrency} conc p50 (ms)", lambda s: s.pct_ms(0.50), None),
        *((phase, f"{phase} CPU {name} (us/req)", lambda s, r=roles: s.cpu_us(*r), roles)
          for phase in ("seq", "conc") for name, roles in (("ingress", ingress), ("serve", serve))),
    ]
    for path in opts.paths:
        for n in opts.sizes:
            for phase, label, fn, roles in metrics:
                hw = results.get((path, n, phase, "hand-written"))
                mw = results.get((path, n, phase, "modelweave"))
                if hw is None or mw is None:
                    continue
                a, b = fn(hw), fn(mw)
                ratio = b / a if a else float("nan")
                spread = round_spread(hw, mw, roles) if roles is not None else ""
                lines.append(f"{path:<7}{n:>3}  {label:<26}{a:>13.1f}{b:>12.1f}{ratio:>8.2f}  {spread}".rstrip())
        lines.append("")
    return "\n".join(lines)


def round_spread(hw: Sample, mw: Sample, roles: tuple[str, ...]) -> str:
    """``"min-max"`` of the per-round CPU ratios modelweave / hand-written (rounds paired in order)."""
    ratios = [b / a for a, b in zip(hw.round_cpu_us(*roles), mw.round_cpu_us(*roles), strict=False) if a > 0]
    if len(ratios) < 2:
        return ""
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def print_inprocess(sizes: list[int]) -> None:
    """Prints :func:`inprocess_cost_us` for each N (metrics included when they can be created)."""
    try:
        from deployments.metrics import RayMetricsSink

        sink: Any = RayMetricsSink()
    except ImportError:  # an older tree without trace metrics
        sink = None
    print("modelweave ingress code, in-process (no Ray calls), CPU microseconds per request:")
    for n in sizes:
        for stage, us in inprocess_cost_us(n, sink).items():
            print(f"  N={n}  {stage:<42}{us:8.1f}")
    print(flush=True)


def parse_args(argv: Sequence[str] | None) -> tuple[Options, argparse.Namespace]:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sizes", default="1,2,4", help="chain lengths N, comma-separated")
    p.add_argument("--sequential", type=int, default=200, help="sequential requests per app and path")
    p.add_argument("--concurrent", type=int, default=1000, help="concurrent-phase requests per app and path")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    p.add_argument("--warmup", type=int, default=20, help="sequential warm-up requests (x4 concurrent)")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds per phase")
    p.add_argument("--paths", default="http,handle", help="http and/or handle")
    p.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of the local Ray cluster")
    p.add_argument("--profile", type=pathlib.Path, default=None,
                   help="directory for py-spy profiles of the largest N under concurrent HTTP load")
    p.add_argument("--profile-seconds", type=int, default=15)
    p.add_argument("--no-inprocess", action="store_true", help="skip the in-process cost breakdown")
    p.add_argument("--nice", type=int, default=DeploymentSettings().nice,
                   help="process priority of both sides' model replicas (default: modelweave's deployment.nice)")
    p.add_argument("--transport", choices=("grpc", "actor"), default="grpc",
                   help="Serve's inter-deployment transport on both sides (modelweave's ingress.transport); "
                        "the proxy's follows RAY_SERVE_PROXY_USE_GRPC (modelweave.serving.SERVE_ENV)")
    args = p.parse_args(argv)
    INGRESS["transport"] = args.transport
    opts = Options(
        sizes=[int(s) for s in args.sizes.split(",") if s],
        sequential=args.sequential,
        concurrent=args.concurrent,
        concurrency=args.concurrency,
        warmup=args.warmup,
        rounds=args.rounds,
        paths=[s for s in args.paths.split(",") if s],
    )
    for path in opts.paths:
        if path not in ("http", "handle"):
            p.error(f"unknown path {path!r}")
    return opts, args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the whole benchmark on a fresh local Ray cluster and prints the table."""
    import ray
    from ray import serve

    from deployments.app import LOGGING_CONFIG

    opts, args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    apply_serve_env()  # both sides: the proxy's transport is cluster-wide
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    ray.init(
        address="local",  # never join another cluster on this machine
        num_cpus=args.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        namespace="modelweave-bench",
        runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}},  # replicas import `overhead:AppendChar`
    )
    if not args.no_inprocess:
        print_inprocess(opts.sizes)
    http_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": http_port}, logging_config=LOGGING_CONFIG)
    http_base = f"http://127.0.0.1:{http_port}"
    results: dict[Key, Sample] = {}
    profile_report: list[str] = []
    try:
        for n in opts.sizes:
            t_deploy = time.perf_counter()
            serve.run(hand_app(n, args.nice), name=hw_name(n), route_prefix=f"/{hw_name(n)}")
            serve.run(modelweave_app(n, args.nice), name=mw_name(n), route_prefix=f"/{mw_name(n)}")
            t_run = time.perf_counter()
            asyncio.run(measure(n, http_base, opts, results))
            print(f"N={n}: deployed in {t_run - t_deploy:.1f} s, measured in {time.perf_counter() - t_run:.1f} s",
                  flush=True)
            if args.profile is not None and n == max(opts.sizes):
                profile_report = asyncio.run(profile_run(n, http_base, opts, args.profile, args.profile_seconds))
            serve.delete(hw_name(n))
            serve.delete(mw_name(n))
    finally:
        ray.shutdown()
    print()
    print(f"sequential: {opts.sequential} requests, concurrent: {opts.concurrent} requests with "
          f"{opts.concurrency} clients, per app, path and N; {opts.rounds} alternating rounds; "
          f"{os.cpu_count()} cores; load average at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f}")
    print(table(results, opts))
    if profile_report:
        print("\n".join(profile_report))
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    # Re-import this file under its importable name, so the deployment classes pickle by
    # reference to the same module the replicas import (not by value from __main__).
    sys.path.insert(0, str(HERE))
    sys.exit(importlib.import_module(MODULE).main())
