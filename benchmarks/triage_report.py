"""The README's triage table: every single model, the baseline and each evolution step, on the same data.

Quality and compute come from ``modelweave eval`` machinery over the held-out TEST split
(batch path by default); latency p50/p99 is measured through Ray Serve (HTTP proxy ->
ingress -> model deployments) with sequential requests, one version deployed at a time.

    python benchmarks/triage_report.py [--limit N] [--latency-requests 200] [--runner batch|local]

Prints a Markdown table (and writes it, with a quality-vs-compute plot, under --out).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import httpx

REPO = pathlib.Path(__file__).resolve().parents[1]
VERSIONS = [
    "examples/evolution/single-vader.yaml",
    "examples/evolution/single-minilm.yaml",
    "examples/evolution/single-ensemble.yaml",
    "examples/evolution/1-baseline.yaml",
    "examples/evolution/cascade-only.yaml",
    "examples/evolution/2-preprocessing.yaml",
    "examples/evolution/3-routing.yaml",
    "examples/triage.yaml",
]


def serve_latency(specs: list, texts: list[str], n: int) -> dict[str, tuple[float, float]]:
    """p50/p99 ms of ``n`` sequential HTTP requests per graph, each deployed alone."""
    from ray import serve

    from deployments.app import graph_app
    from modelweave.ports import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    out = {}
    for spec in specs:
        serve.run(graph_app(spec), name=spec.name, route_prefix=f"/{spec.name}")
        url = f"http://127.0.0.1:{port}/{spec.name}"
        with httpx.Client(timeout=60) as client:
            for text in texts[:20]:  # warm-up (also fills nothing in the cache: texts repeat below)
                client.post(url, json={"input": {"text": {"content": text + " !"}}})
            times = []
            for text in texts[:n]:
                start = time.perf_counter()
                r = client.post(url, json={"input": {"text": {"content": text}}})
                times.append((time.perf_counter() - start) * 1000)
                r.raise_for_status()
        times.sort()
        out[spec.name] = (statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))])
        serve.delete(spec.name)
        print(f"  latency {spec.name}: p50 {out[spec.name][0]:.1f} ms, p99 {out[spec.name][1]:.1f} ms", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=None, help="hashed subset of the test split (default: all)")
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--runner", choices=["batch", "local"], default="batch")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--versions", nargs="*", default=VERSIONS, help="graph files, in evolution order")
    opts = parser.parse_args()

    import ray

    from modelweave import evaluate as ev
    from modelweave.apps.triage.export import export
    from modelweave.prepare import data_dir, run_prepare_hooks
    from modelweave.serving import apply_serve_env, embedded_num_cpus
    from modelweave.spec import load_graph

    specs = [load_graph(REPO / v) for v in opts.versions]
    for spec in specs:
        run_prepare_hooks(spec, data_dir(), log=lambda m: print(m, file=sys.stderr))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "test.parquet")
        rows = export("test", path, opts.limit)
        texts, truths = ev.load_labelled(path, "text", "label")
    print(f"test split: {rows} rows", flush=True)
    apply_serve_env()
    ray.init(address="local", num_cpus=embedded_num_cpus(), include_dashboard=False, log_to_driver=False,
             namespace="modelweave")
    reports = ev.evaluate([(s.name, s) for s in specs], texts, truths, runner=opts.runner)
    latency = serve_latency(specs, texts, opts.latency_requests)
    for r in reports:
        r.p50_ms, r.p99_ms = latency[r.name]
    table = ev.markdown(reports, reach_of=["minilm", "embed"])
    note = (f"\n{rows} held-out test tweets; quality and model CPU from the {opts.runner} path; latency: "
            f"{opts.latency_requests} sequential HTTP requests through Serve per version.\n")
    print(table + note)
    out = pathlib.Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "triage_report.md").write_text(table + note, encoding="utf-8")
    ev.plot([r for r in reports if r.name != "single-vader"], out / "triage_quality_vs_compute.png",
            title="triage versions: accuracy vs model CPU per request")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
