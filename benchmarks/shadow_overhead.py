"""What a ``shadow`` node costs the primary: its p50 / p99 latency with and without a mirrored candidate.

In-process executor, the ingress's view: each request runs a glue step inside the
process (``--cpu-ms`` of pure-Python CPU, as an inline model does) and one remote model
hop (an ``asyncio.sleep`` of ``--hop-ms``, jittered, as a Serve call is from the
ingress). The shadow version mirrors every request to a candidate that is another
remote hop (``--candidate-ms``), in the background as the ingress does, with the metrics
callback and the JSONL sink switched on. Remote hops cost this process no CPU, as a
replica elsewhere does not; what is measured is the shadow machinery (copying the input,
a task per mirror, comparing, metrics, the sink line) and its effect on the event loop.

Open-loop Poisson arrivals at ``--rate`` per second; rounds of the two graphs alternate
so drift on a shared machine hits both, and two plain rounds are compared with each
other to show the noise floor. Run from the repository root::

    python benchmarks/shadow_overhead.py                 # 8 rounds x 1500 requests at 300/s
    python benchmarks/shadow_overhead.py --rate 600 --json /tmp/shadow.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from google.protobuf.message import Message as ProtoMessage

from modelweave.adapters.base import ModelAdapter
from modelweave.checker import check_graph
from modelweave.executor import Executor
from modelweave.observe import DictSink, TraceMetrics
from modelweave.spec import ModelNode, parse_graph
from modelweave.v1 import messages_pb2 as pb

HERE = pathlib.Path(__file__).resolve().parent
MODULE = "shadow_overhead"


class Glue(ModelAdapter):
    """Signature only (the benchmark's caller does the work): Text -> Text."""

    consumes = ("Text",)
    produces = "Text"
    blocking: ClassVar[bool] = False

    def predict(self, batch: Sequence[pb.Message]) -> list[ProtoMessage]:
        return [pb.Text(content=m.text.content) for m in batch]


class Remote(ModelAdapter):
    """Signature only: Text -> Classification."""

    consumes = ("Text",)
    produces = "Classification"

    def predict(self, batch: Sequence[pb.Message]) -> list[ProtoMessage]:
        return [pb.Classification(label="positive", confidence=0.9) for _ in batch]


class SimCaller:
    """Glue burns CPU here; remote models wait like a Serve hop (no CPU in this process)."""

    def __init__(self, cpu_ms: float, hop_ms: float, candidate_ms: float, seed: int = 0) -> None:
        self.cpu_ms, self.hop_ms, self.candidate_ms = cpu_ms, hop_ms, candidate_ms
        self.rng = random.Random(seed)

    async def call(self, model: ModelNode, message: pb.Message) -> ProtoMessage:
        if model.name == "glue":
            end = time.thread_time() + self.cpu_ms / 1000.0
            while time.thread_time() < end:
                pass
            return pb.Text(content=message.text.content.strip())
        mean = self.candidate_ms if model.name == "candidate" else self.hop_ms
        await asyncio.sleep(self.rng.lognormvariate(0.0, 0.25) * mean / 1000.0)
        label = "positive" if len(message.text.content) % 3 else "negative"
        return pb.Classification(label=label, confidence=0.5 + (len(message.text.content) % 50) / 100.0)


def graphs(sink: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(plain, shadowed) graph data: the same primary, the second mirrored to a candidate."""
    glue = {"kind": "model", "name": "glue", "impl": f"{MODULE}:Glue"}
    primary = {"kind": "model", "name": "primary", "impl": f"{MODULE}:Remote"}
    candidate = {"kind": "model", "name": "candidate", "impl": f"{MODULE}:Remote"}
    plain = {"name": "plain", "flow": {"kind": "chain", "name": "main", "steps": [glue, primary]}}
    shadowed = {"name": "shadowed", "flow": {"kind": "chain", "name": "main", "steps": [
        glue, {"kind": "shadow", "name": "s", "primary": primary, "candidates": [candidate], "sink": sink}]}}
    return plain, shadowed


async def run_round(ex: Executor, rate: float, n: int, seed: int) -> tuple[list[float], float]:
    """Latencies (ms) of ``n`` Poisson arrivals at ``rate``/s, and this process's CPU ms per request."""
    rng = random.Random(seed)
    latencies: list[float] = []
    texts = [f"message number {i} " + "x" * (i % 40) for i in range(n)]

    async def one(i: int) -> None:
        start = time.perf_counter()
        await ex.run(pb.Message(text=pb.Text(content=texts[i])))
        latencies.append((time.perf_counter() - start) * 1000.0)

    cpu = time.process_time()
    tasks = []
    next_at = time.perf_counter()
    for i in range(n):
        next_at += rng.expovariate(rate)
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    await ex.mirrors.drain(30)  # mirrors of this round do not spill into the next
    return latencies, (time.process_time() - cpu) * 1000.0 / n


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round((len(ordered) - 1) * q / 100.0))]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    sink = str(pathlib.Path(tempfile.mkdtemp(prefix="shadow-bench-")) / "shadow.jsonl")
    plain_data, shadow_data = graphs(sink)
    caller = SimCaller(args.cpu_ms, args.hop_ms, args.candidate_ms)
    plain = Executor(check_graph(parse_graph(plain_data)), caller)
    checked = check_graph(parse_graph(shadow_data))
    metrics = TraceMetrics(checked, DictSink())
    shadowed = Executor(checked, caller, on_shadow=metrics.record_shadow, shadow_inline=False)
    await run_round(plain, args.rate, 200, 99)  # warm-up
    await run_round(shadowed, args.rate, 200, 99)
    rounds: dict[str, list[dict[str, float]]] = {"plain": [], "shadow": []}
    for r in range(args.rounds):
        order = [("plain", plain), ("shadow", shadowed)] if r % 2 == 0 else [("shadow", shadowed), ("plain", plain)]
        for name, ex in order:
            lat, cpu = await run_round(ex, args.rate, args.requests, seed=r)
            rounds[name].append({"p50": pct(lat, 50), "p99": pct(lat, 99), "cpu_ms": cpu})
            print(f"round {r} {name:6s} p50 {pct(lat, 50):6.2f} ms  p99 {pct(lat, 99):6.2f} ms  "
                  f"cpu {cpu:.3f} ms/request", file=sys.stderr)
    summary: dict[str, Any] = {"rate": args.rate, "requests_per_round": args.requests, "rounds": args.rounds,
                               "cpu_ms": args.cpu_ms, "hop_ms": args.hop_ms, "candidate_ms": args.candidate_ms}
    for name, rs in rounds.items():
        summary[name] = {k: statistics.median(x[k] for x in rs) for k in ("p50", "p99", "cpu_ms")}
    for k in ("p50", "p99", "cpu_ms"):
        summary[f"{k}_change_pct"] = (summary["shadow"][k] / summary["plain"][k] - 1) * 100.0
        # Noise floor: how far the plain graph's own rounds spread (half the even/odd gap).
        even = statistics.median(x[k] for x in rounds["plain"][0::2])
        odd = statistics.median(x[k] for x in rounds["plain"][1::2])
        summary[f"{k}_noise_pct"] = abs(even / odd - 1) * 100.0
    for event in ("mirrored", "shed", "compared", "error"):
        summary[event] = shadowed.mirrors.count("shadowed/main/s", event)
    summary["sink_lines"] = len(pathlib.Path(sink).read_text(encoding="utf-8").splitlines())
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0, help="arrivals per second")
    parser.add_argument("--requests", type=int, default=1500, help="requests per round")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per graph (alternating)")
    parser.add_argument("--cpu-ms", type=float, default=0.3, help="in-process glue CPU per request")
    parser.add_argument("--hop-ms", type=float, default=5.0, help="primary's remote hop (mean)")
    parser.add_argument("--candidate-ms", type=float, default=8.0, help="candidate's remote hop (mean)")
    parser.add_argument("--json", default=None, help="also write the summary here")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))  # graphs name the adapters above as shadow_overhead:Glue
    summary = asyncio.run(main_async(args))
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        pathlib.Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
