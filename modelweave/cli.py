"""The ``modelweave`` command line: check, build, run, call."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import click
import yaml

from modelweave.checker import CheckedGraph, check_graph
from modelweave.cli_cluster import fit_options
from modelweave.cli_eval import eval_command
from modelweave.cli_security import edge_options, secure
from modelweave.errors import ModelweaveError
from modelweave.layout import verbose_lines
from modelweave.messages import full_name
from modelweave.spec import GraphSpec, load_graph


@contextlib.contextmanager
def user_output(flag: str, path: str) -> Iterator[None]:
    """Writing a file the user named: an unwritable path is a one-line error (exit 2)."""
    try:
        yield
    except OSError as exc:
        click.echo(f"error: {flag} {path}: {exc.strerror or exc}", err=True)
        sys.exit(2)


def load_checked(paths: tuple[str, ...]) -> list[CheckedGraph]:
    """Loads and type-checks every graph before any side effect; exits 2 on a bad graph."""
    checked = []
    names: set[str] = set()
    for path in paths:
        try:
            graph = check_graph(load_graph(path))
        except ModelweaveError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        if graph.spec.name in names:
            click.echo(f"error: two graphs are named {graph.spec.name!r}", err=True)
            sys.exit(2)
        names.add(graph.spec.name)
        checked.append(graph)
    return checked


@click.group()
@click.version_option(package_name="modelweave")
def main() -> None:
    """modelweave: multi-model AI graphs on Ray Serve and Ray Data."""


@main.command()
@click.argument("graphs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-v", "--verbose", is_flag=True, help="print every node with its message types")
def check(graphs: tuple[str, ...], verbose: bool) -> None:
    """Validate and type-check GRAPHS (YAML files) without starting anything."""
    for graph in load_checked(graphs):
        spec = graph.spec
        ins = ", ".join(sorted(full_name(t) for t in graph.nodes[f"{spec.name}/{spec.flow.name}"].available_in))
        outs = ", ".join(sorted(full_name(t) for t in graph.output_types))
        click.echo(f"ok: graph {spec.name!r}: {len(graph.nodes)} nodes, {len(graph.models)} model nodes in "
                   f"{len(graph.layout.deployments)} model deployments ({len(graph.layout.inline)} in the ingress); "
                   f"input {{{ins}}} -> output {{{outs}}}")
        if verbose:
            click.echo("\n".join(f"  {line}" for line in verbose_lines(graph)))


def serve_config(graphs: list[GraphSpec], *, host: str, http_port: int, grpc_port: int,
                 working_dir: str | None = None, tls: dict[str, str] | None = None) -> dict[str, Any]:
    """A standard Ray Serve config (for ``serve run`` / ``serve deploy`` / KubeRay) running ``graphs``."""
    from deployments.app import GRPC_SERVICER, LOGGING_CONFIG, deployment_options
    from modelweave.spec import dump_graph

    apps = []
    for spec in graphs:
        checked = check_graph(spec)
        deployments = []
        for name, plan in checked.layout.deployments.items():
            opts = deployment_options(plan.settings)
            opts.pop("logging_config")
            deployments.append({"name": name, **opts})
        app: dict[str, Any] = {
            "name": spec.name,
            "route_prefix": f"/{spec.name}",
            "import_path": "deployments.app:build_app",
            "args": {"graph": dump_graph(spec)},
            "deployments": deployments,
        }
        if working_dir:
            app["runtime_env"] = {"working_dir": working_dir}
        apps.append(app)
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": http_port, **(tls or {})},
        "grpc_options": {"port": grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]},
        "logging_config": LOGGING_CONFIG,
        "applications": apps,
    }


@main.command()
@click.argument("graphs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--data-dir", default=None, help="artifact dir (default $MODELWEAVE_DATA_DIR or ~/.cache/modelweave)")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--publish", "publish_to", default=None, metavar="ADDRESS",
              help="also put the artifact sets into the artifact store of the Ray cluster at ADDRESS")
def prepare(graphs: tuple[str, ...], data_dir: str | None, quiet: bool, publish_to: str | None) -> None:
    """Build the artifacts GRAPHS need (training, indexes); cached and deterministic."""
    from modelweave.prepare import data_dir as resolve_data_dir
    from modelweave.prepare import run_prepare_hooks

    directory = resolve_data_dir(data_dir)
    sets = []
    for graph in load_checked(graphs):
        sets += run_prepare_hooks(graph.spec, directory, progress=not quiet, log=lambda m: click.echo(m, err=True))
    click.echo(f"prepared: {directory}")
    if publish_to:
        from modelweave.cli_cluster import publish_sets

        publish_sets(publish_to, sets)


@main.command()
@click.argument("graphs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Serve config file to write")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--http-port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--grpc-port", default=9000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--working-dir", default=None, help="runtime_env working_dir URI for every app (e.g. local:///abs/dir)")
@fit_options(target=True)
@edge_options
def build(graphs: tuple[str, ...], output: str, host: str, http_port: int, grpc_port: int,
          working_dir: str | None, num_cpus: float | None, address: str | None, profile: str, force: bool,
          auth_tokens: str | None, insecure: bool, tls_cert: str | None, tls_key: str | None) -> None:
    """Write a Ray Serve config that plain `serve run FILE` / `serve deploy FILE` accept."""
    from modelweave.cli_cluster import apply_profile, check_build_fit

    checked = load_checked(graphs)
    specs, tls = secure([g.spec for g in checked], host, auth_tokens, insecure, tls_cert, tls_key)
    specs, profile_note = apply_profile(specs, profile, num_cpus)
    check_build_fit(specs, num_cpus=num_cpus, address=address, profile=profile, force=force)
    config = serve_config(specs, host=host, http_port=http_port, grpc_port=grpc_port, working_dir=working_dir,
                          tls=tls)
    header = ("# Generated by `modelweave build`; edit the graph files and rebuild instead of editing this.\n"
              "# Needs the modelweave package installed on every Ray node (its gRPC servicer is imported by\n"
              "# Serve's proxy).\n")
    header += f"# {profile_note} (`modelweave build --profile {profile}`).\n" if profile_note else ""
    if not auth_tokens:
        header += ("# INSECURE: built without --auth-tokens, so anyone who reaches the ports can call the graphs.\n"
                   "# Keep it on a private network or behind an authenticating proxy, or rebuild with --auth-tokens.\n")
    with user_output("-o", output):
        pathlib.Path(output).write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    click.echo(f"wrote {output}: {len(checked)} application(s); run it with `serve run {output}`")


@main.command()
@click.argument("graphs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="address HTTP and gRPC listen on")
@click.option("--http-port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--grpc-port", default=9000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--dashboard-port", default=8265, show_default=True, type=click.IntRange(1, 65535))
@click.option("--address", default=None, help="join an existing Ray cluster instead of starting one")
@click.option("--num-cpus", default=None, type=click.IntRange(min=1),
              help="logical CPUs of the embedded Ray (default max(4, cores))")
@click.option("--metrics-port", default=8080, show_default=True, type=click.IntRange(1, 65535),
              help="Prometheus endpoint of the embedded Ray")
@click.option("--data-dir", default=None, help="artifact dir (default $MODELWEAVE_DATA_DIR or ~/.cache/modelweave)")
@click.option("--direct-ingress", is_flag=True,
              help="the graph's ingress replicas listen on the HTTP and gRPC ports themselves, sharing them "
                   "(no Serve proxy hop; one graph, embedded Ray)")
@fit_options()
@edge_options
def run(graphs: tuple[str, ...], host: str, http_port: int, grpc_port: int, dashboard_port: int,
        address: str | None, num_cpus: int | None, metrics_port: int, data_dir: str | None, direct_ingress: bool,
        profile: str, force: bool, auth_tokens: str | None, insecure: bool, tls_cert: str | None,
        tls_key: str | None) -> None:
    """Serve GRAPHS on an embedded local Ray until Ctrl-C (preparing their artifacts first)."""
    from modelweave.cli_cluster import apply_profile, enforce_fit
    from modelweave.prepare import DATA_DIR_ENV, run_prepare_hooks
    from modelweave.prepare import data_dir as resolve_data_dir

    checked = load_checked(graphs)
    specs, tls = secure([g.spec for g in checked], host, auth_tokens, insecure, tls_cert, tls_key)
    specs, _ = apply_profile(specs, profile, num_cpus, echo=True)
    if direct_ingress:
        from modelweave.serving import direct_ingress_ports_taken, direct_ingress_problem

        problem = direct_ingress_problem(specs, address) or direct_ingress_ports_taken(host, http_port, grpc_port)
        if problem:
            click.echo(f"error: {problem}", err=True)
            sys.exit(2)
    if not auth_tokens:
        click.echo(f"modelweave: warning: no --auth-tokens; Serve's gRPC proxy listens on every interface "
                   f"(port {grpc_port}) whatever --host says, so firewall it or use --auth-tokens", err=True)
    directory = resolve_data_dir(data_dir)
    # Replicas inherit the environment of the Ray processes this command starts.
    os.environ[DATA_DIR_ENV] = str(directory)
    artifact_sets = []
    for graph in checked:
        artifact_sets += run_prepare_hooks(graph.spec, directory, log=lambda m: click.echo(m, err=True))
    stop = threading.Event()

    from modelweave.serving import start_serving, stop_serving

    def _on_signal(signum: int, _frame: Any) -> None:
        click.echo(f"\nmodelweave: received {signal.Signals(signum).name}, shutting down ...", err=True)
        stop.set()

    session = start_serving(specs, host=host, http_port=http_port, grpc_port=grpc_port,
                            dashboard_port=dashboard_port, address=address, num_cpus=num_cpus,
                            metrics_port=metrics_port, log=lambda m: click.echo(m, err=True), tls=tls,
                            artifact_sets=artifact_sets,
                            fit=lambda nodes: enforce_fit(specs, nodes, address or "the embedded Ray", force),
                            direct_ingress=direct_ingress)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    for spec in session.graphs:
        click.echo(f"modelweave: graph {spec.name!r} is ready")
        click.echo(f"  HTTP:      {'https' if tls else 'http'}://{host}:{http_port}/{spec.name}  "
                   f"(POST InferRequest JSON; /stream, /describe{'; Bearer token' if auth_tokens else ''})")
        click.echo(f"  gRPC:      {host}:{grpc_port}  (modelweave.v1.GraphService; metadata application={spec.name})")
        if direct_ingress:
            click.echo("  Direct:    the ingress replicas answer on both ports themselves (no Serve proxy hop)")
    click.echo(f"  Dashboard: {session.dashboard_url or 'not running'}")
    if not address:
        click.echo(f"  Metrics:   http://{host}:{metrics_port}/metrics  (Prometheus; ray_modelweave_* series)")
    click.echo("Press Ctrl-C to stop.", nl=True)
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    stop_serving(session, log=lambda m: click.echo(m, err=True))
    click.echo("modelweave: stopped", err=True)


@main.command()
@click.argument("graph", type=click.Path(dir_okay=False))
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="image file (.png or .svg); Mermaid text goes to stdout, or to --mermaid")
@click.option("--mermaid", "mermaid_path", default=None, type=click.Path(dir_okay=False), help="Mermaid file")
@click.option("--stats", "stats_source", default=None,
              help="annotate edges: a Prometheus URL (e.g. http://127.0.0.1:8080/metrics) or a stats JSON file")
def draw(graph: str, output: str | None, mermaid_path: str | None, stats_source: str | None) -> None:
    """Draw GRAPH: Mermaid text and an image (nodes by kind, typed edges, replicas and CPU/GPU)."""
    import json

    from modelweave.draw import NodeStats, render_image, stats_from_prometheus, to_mermaid

    checked = load_checked((graph,))[0]
    stats = None
    if stats_source:
        try:
            if stats_source.startswith(("http://", "https://")):
                import httpx

                stats = stats_from_prometheus(httpx.get(stats_source, timeout=30).text, checked.spec.name)
            else:
                raw = json.loads(pathlib.Path(stats_source).read_text(encoding="utf-8"))
                if isinstance(raw, list):  # `modelweave eval --json` output: take this graph's report
                    report = next((r for r in raw if r["name"] == checked.spec.name and not r.get("removed")),
                                  None)
                    if report is None:
                        click.echo(f"error: {stats_source} has no report for graph {checked.spec.name!r}", err=True)
                        sys.exit(2)
                    stats = {node: NodeStats(share=report["node_share"].get(node, 0.0), mean_ms=ms)
                             for node, ms in report["node_ms"].items()}
                else:
                    stats = {k: NodeStats(**v) for k, v in raw.items()}
        except Exception as exc:  # unreachable URL, missing file, bad JSON or a JSON of another shape
            click.echo(f"error: --stats {stats_source}: cannot read node statistics from it: "
                       f"{type(exc).__name__}: {exc}", err=True)
            sys.exit(2)
    text = to_mermaid(checked, stats)
    if mermaid_path:
        with user_output("--mermaid", mermaid_path):
            pathlib.Path(mermaid_path).write_text(text, encoding="utf-8")
    elif not output:
        click.echo(text, nl=False)
    if output:
        with user_output("-o", output):
            render_image(checked, output, stats)
        click.echo(f"wrote {output}", err=True)


@main.command()
@click.argument("graph_name")
@click.argument("text")
@click.option("--http", "http_url", default="http://127.0.0.1:8000", show_default=True, help="HTTP base URL")
@click.option("--grpc", "grpc_addr", default=None, help="call over gRPC at HOST:PORT instead of HTTP")
@click.option("--stream", is_flag=True, help="print each hop as it finishes")
@click.option("--timeout-ms", default=0, type=click.IntRange(0, 2**32 - 1), help="request deadline (0 = graph default)")
@click.option("--request-id", default="", help="request id to propagate")
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON response")
@click.option("--token", default="", envvar="MODELWEAVE_TOKEN", help="bearer token (default $MODELWEAVE_TOKEN)")
def call(graph_name: str, text: str, http_url: str, grpc_addr: str | None, stream: bool, timeout_ms: int,
         request_id: str, as_json: bool, token: str) -> None:
    """Send TEXT to the running graph GRAPH_NAME and print the result and its trace."""
    from modelweave.client import call_graph

    code = call_graph(graph_name, text, http_url=http_url, grpc_addr=grpc_addr, stream=stream,
                      timeout_ms=timeout_ms, request_id=request_id, as_json=as_json, echo=click.echo, token=token)
    sys.exit(code)


@main.command()
@click.argument("graph", type=click.Path(dir_okay=False))
@click.option("-i", "--input", "input_path", required=True, help="file, folder or glob (local path or URI)")
@click.option("-o", "--output", "output_path", required=True, help="output folder of part files (local path or URI)")
@click.option("--format", "fmt", default=None, help="input format: parquet, csv, json (lines); default: extension")
@click.option("--output-format", default=None, help="output format; default: output extension, else parquet")
@click.option("--text-column", default=None, help="input column holding the text (default: derived, `text`)")
@click.option("--column", "columns", multiple=True, metavar="PART=COLUMN",
              help="map an input part to a column: Text=body, Embedding=features, Tensor[.NAME]=pixels (repeatable)")
@click.option("--message-column", default=None, help="column holding the whole input message as protobuf JSON")
@click.option("--batch-size", default=1024, show_default=True, type=click.IntRange(min=1),
              help="rows per Ray Data batch (a model pool's micro-batches: at most 256, unless batch.batch_size says)")
@click.option("--concurrency", default=None, type=click.IntRange(min=1),
              help="graph stage actors (default: CPUs/2 when the stages run models that do real work; "
                   "CPUs/4 when they run only rule-based glue beside the pools)")
@click.option("--timeout-s", default=None, type=click.FloatRange(min=0, min_open=True),
              help="per-row deadline (default: the graph's timeout_s); it covers the walk of the row's chunk, "
                   "sized to take at most a quarter of it")
@click.option("--prefix", default="", help="prefix for the added result column names")
@click.option("--trace", "include_trace", is_flag=True, help="add a trace_json column with each row's full trace")
@click.option("--overwrite", is_flag=True, help="replace an existing output")
@click.option("--address", default=None, help="join an existing Ray cluster instead of starting one")
@click.option("--num-cpus", default=None, type=click.IntRange(min=1),
              help="logical CPUs of the embedded Ray (default max(4, cores))")
@click.option("--inline", type=click.Choice(["none", "cheap"]), default="cheap", show_default=True,
              help="cheap: run rule-based (non-blocking) models inside the graph stage; none: a pool for each")
@click.option("--row-by-row", is_flag=True,
              help="run each row as its own graph run (as online) instead of each batch through the graph together")
def batch(graph: str, input_path: str, output_path: str, fmt: str | None, output_format: str | None,
          text_column: str | None, columns: tuple[str, ...], message_column: str | None, batch_size: int,
          concurrency: int | None, timeout_s: float | None, prefix: str, include_trace: bool, overwrite: bool,
          address: str | None, num_cpus: int | None, inline: str, row_by_row: bool) -> None:
    """Run GRAPH over every row of --input as a streaming Ray Data job; write rows plus results.

    Input columns map to the graph's input parts (derived from the graph and the input's
    schema; override with --column / --text-column / --message-column). Input, columns and
    output are checked before Ray starts (exit 2).
    """
    from modelweave.batch.inputs import parse_column_flags
    from modelweave.batch.runner import JobOptions, run_job
    from modelweave.errors import InvalidArgument

    try:
        options = JobOptions(input_path=input_path, output_path=output_path, fmt=fmt, output_format=output_format,
                             text_column=text_column, columns=parse_column_flags(columns),
                             message_column=message_column, batch_size=batch_size, concurrency=concurrency,
                             timeout_s=timeout_s, prefix=prefix, include_trace=include_trace, overwrite=overwrite,
                             address=address, num_cpus=num_cpus, inline=inline, row_by_row=row_by_row)
        summary = run_job(graph, options, log=lambda m: click.echo(m, err=True))
    except InvalidArgument as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except ModelweaveError as exc:
        click.echo(f"error: {exc.status.value}: {exc}", err=True)
        sys.exit(1)
    click.echo(f"modelweave: wrote {output_path}")
    click.echo(summary.format())
    sys.exit(1 if summary.rows and summary.failures == summary.rows else 0)


# Commands with modules of their own (kept out of this file to keep it small).
main.add_command(eval_command)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
