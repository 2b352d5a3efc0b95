"""Starting and stopping graphs on an embedded (or existing) Ray cluster for ``modelweave run``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from modelweave.spec import GraphSpec


@dataclass
class ServingSession:
    """What ``start_serving`` started."""

    graphs: list[GraphSpec]
    dashboard_url: str
    owns_cluster: bool


def start_serving(graphs: list[GraphSpec], *, host: str, http_port: int, grpc_port: int, dashboard_port: int,
                  address: str | None = None, num_cpus: int | None = None, metrics_port: int | None = None,
                  log: Callable[[str], None] = print) -> ServingSession:
    """Starts Ray (unless ``address``), Serve with HTTP + gRPC, and one application per graph."""
    import ray
    from ray import serve

    from deployments.app import GRPC_SERVICER, graph_app

    if address:
        ctx = ray.init(address=address, namespace="modelweave", log_to_driver=False)
    else:
        log("modelweave: starting an embedded Ray cluster ...")
        # More logical CPUs than cores by default: model replicas ask for fractions of a CPU and
        # mostly wait on each other, and a 2-core laptop should still fit the reference app.
        ctx = ray.init(address="local", namespace="modelweave", include_dashboard=True, dashboard_host=host,
                       dashboard_port=dashboard_port, num_cpus=num_cpus or max(4, os.cpu_count() or 1),
                       log_to_driver=False, _metrics_export_port=metrics_port)
    serve.start(
        http_options={"host": host, "port": http_port},
        grpc_options={"port": grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]},
    )
    for spec in graphs:
        log(f"modelweave: deploying graph {spec.name!r} ...")
        serve.run(graph_app(spec), name=spec.name, route_prefix=f"/{spec.name}", blocking=False)
    url = getattr(ctx, "dashboard_url", "") or ""
    if url and not url.startswith("http"):
        url = f"http://{url}"
    return ServingSession(graphs=graphs, dashboard_url=url, owns_cluster=not address)


def stop_serving(session: ServingSession, log: Callable[[str], None] = print) -> None:
    """Deletes the graphs' applications (and the embedded cluster, if we started it)."""
    import ray
    from ray import serve

    if session.owns_cluster:
        serve.shutdown()
    else:
        for spec in session.graphs:
            serve.delete(spec.name)
    ray.shutdown()
