"""Starting and stopping graphs on an embedded (or existing) Ray cluster for ``modelweave run``."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass

from modelweave.fit import NodeCapacity, nodes_from_ray
from modelweave.ports import free_port, refuse_if_listening
from modelweave.spec import GraphSpec


def embedded_num_cpus(requested: int | None = None) -> int:
    """Logical CPUs of an embedded Ray cluster: ``requested``, else ``max(4, cores)``.

    More than cores by default: model replicas ask for fractions of a CPU and mostly wait on
    each other, so a 2-core laptop still fits the reference app, and a batch job's listing step
    (a whole CPU in Ray Data) does not squeeze its stages and pools.
    """
    return requested or max(4, os.cpu_count() or 1)


#: Environment of the Ray processes that modelweave starts (embedded ``run``, the test cluster,
#: the benchmarks; the cluster configs in ``cluster/`` set the same). Serve's processes read it
#: once, at import, so it must be in place before Ray starts.
#:
#: - ``RAY_SERVE_PROXY_USE_GRPC``: Serve's HTTP and gRPC proxies forward requests to the ingress
#:   over Serve's inter-deployment gRPC instead of Ray actor calls (the ingress itself calls
#:   model deployments the way ``ingress.transport`` says).
#: - ``RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0``: a replica runs our deployment's methods on
#:   its own event loop instead of handing each request to a second loop in another thread
#:   (two thread hops per request; every deployment here is async and runs its blocking models
#:   in worker threads, so nothing blocks that loop but the constructor, which Serve waits for).
#: - ``RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0``: a deployment handle picks its replica on the
#:   caller's loop instead of a router thread's (two more hops per model call of the ingress).
#:
#: Measured on the reference app (benchmarks/PERFORMANCE_LOG.md): the two settings together cut each model
#: hop's wall time by 1.2-1.5 ms and the CPU of all Ray processes by 3-9 % per request.
SERVE_ENV: dict[str, str] = {
    "RAY_SERVE_PROXY_USE_GRPC": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}


def apply_serve_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Puts :data:`SERVE_ENV` into ``environ`` (``os.environ``) where the user has not set it.

    Call before ``ray.init`` starts a local cluster: its processes inherit this environment.
    A value already set wins, so ``RAY_SERVE_PROXY_USE_GRPC=0 modelweave run ...`` goes back to
    Ray actor calls.

    Returns:
        The variables as they now are.
    """
    target = os.environ if environ is None else environ
    return {name: target.setdefault(name, value) for name, value in SERVE_ENV.items()}


#: Set by ``modelweave run --direct-ingress`` in the environment of the Ray processes it starts:
#: ``"<http port>:<grpc port>"``, the ports every ingress replica binds, shared through
#: ``SO_REUSEPORT`` (``deployments/direct_ingress.py``). Serve's own direct ingress gives each
#: replica a port of its own and leaves the load balancing to a proxy in front; with these ports
#: shared the kernel spreads client connections over the replicas instead.
SHARED_PORTS_ENV = "MODELWEAVE_DIRECT_INGRESS_PORTS"


def direct_ingress_problem(graphs: Sequence[GraphSpec], address: str | None) -> str | None:
    """Why ``modelweave run --direct-ingress`` cannot serve ``graphs``, or None.

    The ingress replicas listen on the public ports themselves, so it takes one graph (the ports
    are the graph's), on a Ray this command starts (Serve reads the setting when Ray starts).
    Any number of ingress replicas (``num_replicas`` or autoscaling) share the two ports.
    """
    if address:
        return "--direct-ingress needs the embedded Ray (Serve reads it when Ray starts); drop --address"
    if len(graphs) != 1:
        return f"--direct-ingress serves one graph (got {len(graphs)}): each needs its own ports"
    return None


def direct_ingress_env(http_port: int, grpc_port: int, replicas: int = 1) -> dict[str, str]:
    """Serve's settings that make every ingress replica listen on ``http_port`` and ``grpc_port``.

    Serve still hands each replica a port of its own from ``[min, max)`` ranges; modelweave's
    replicas take the range's first port instead (:data:`SHARED_PORTS_ENV`), so the ranges only
    need a slot per replica, plus one: a replacement may start before the replica it replaces
    has given its slot back. A restarted replica gets the ports at once: Serve's quarantine of a
    released port (for HAProxy's stale configurations) is off, and so is most of its 30 s drain
    on shutdown (meant for load balancers that need time to notice; here the kernel stops
    sending a closed listener connections at once).
    """
    slots = max(1, replicas) + 1
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http_port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http_port + slots),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc_port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc_port + slots),
        "RAY_SERVE_PORT_QUARANTINE_S": "0",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
        SHARED_PORTS_ENV: f"{http_port}:{grpc_port}",
    }


def direct_ingress_ports_taken(host: str, http_port: int, grpc_port: int) -> str | None:
    """Which of the two ports another process listens on, or None.

    Checked before Ray starts: the replicas share their ports through ``SO_REUSEPORT``, and the
    kernel would let a second ``modelweave run`` of the same user share them too, splitting the
    clients between two graphs. A port with only closing connections on it (a run stopped a
    moment ago) is free.
    """
    for what, bind_host, port in (("HTTP", host, http_port), ("gRPC", "0.0.0.0", grpc_port)):
        try:
            refuse_if_listening(bind_host, port)
        except RuntimeError:
            return f"--direct-ingress: another process listens on the {what} port {port}"
    return None


@dataclass
class ServingSession:
    """What ``start_serving`` started."""

    graphs: list[GraphSpec]
    dashboard_url: str
    owns_cluster: bool


def start_serving(graphs: list[GraphSpec], *, host: str, http_port: int, grpc_port: int, dashboard_port: int,
                  address: str | None = None, num_cpus: int | None = None, metrics_port: int | None = None,
                  log: Callable[[str], None] = print, tls: dict[str, str] | None = None,
                  artifact_sets: Sequence[pathlib.Path] = (),
                  fit: Callable[[list[NodeCapacity]], None] | None = None,
                  direct_ingress: bool = False) -> ServingSession:
    """Starts Ray (unless ``address``), Serve with HTTP + gRPC, and one application per graph.

    ``tls`` holds Serve's ``ssl_certfile`` / ``ssl_keyfile`` HTTP options (HTTPS); Serve's gRPC
    proxy has no TLS option in Ray 2.60 (see README, "Security"). ``fit`` is called with the
    cluster's alive nodes before anything is deployed (it exits when the graphs cannot fit).
    On an existing cluster (``address``) the prepared ``artifact_sets`` are published to the
    cluster's artifact store, so replicas on nodes that never ran ``prepare`` fetch them.
    ``direct_ingress`` (see :func:`direct_ingress_problem`, checked by the caller): the graph's
    ingress replicas themselves listen on ``http_port`` and ``grpc_port`` (all of them on both,
    the kernel spreading connections over them), so a request skips Serve's proxy (one hop
    less); Serve's proxies, which Serve still starts, get free ports nobody uses.
    """
    import ray
    from ray import serve

    from deployments.app import GRPC_SERVICER, graph_app

    if address:
        ctx = ray.init(address=address, namespace="modelweave", log_to_driver=False)
    else:
        log("modelweave: starting an embedded Ray cluster ...")
        apply_serve_env()
        if direct_ingress:
            os.environ.update(direct_ingress_env(http_port, grpc_port, max(g.ingress.most_replicas() for g in graphs)))
            http_port, grpc_port = free_port(), free_port()
        ctx = ray.init(address="local", namespace="modelweave", include_dashboard=True, dashboard_host=host,
                       dashboard_port=dashboard_port, num_cpus=embedded_num_cpus(num_cpus),
                       log_to_driver=False, _metrics_export_port=metrics_port)
    if fit is not None:
        try:
            fit(nodes_from_ray(ray.nodes()))
        except SystemExit:
            ray.shutdown()
            raise
    if address:
        from modelweave.artifacts import publish_set

        for directory in artifact_sets:
            size = publish_set(directory)
            log(f"modelweave: published artifact set {directory.name!r} ({size / 1e6:.1f} MB) to the cluster")
    serve.start(
        http_options={"host": host, "port": http_port, **(tls or {})},
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
