"""Builds the Ray Serve application of a graph: its model deployments plus the ingress.

Each model node gets its own deployment, except nodes co-located in a group (one
``GroupDeployment`` per group) and cheap nodes that run inside the ingress (see
:mod:`modelweave.layout`).

``build_app`` is the application builder that generated Serve configs point at, so
plain ``serve run config.yaml`` / ``serve deploy config.yaml`` / KubeRay run a graph
without modelweave's CLI.
"""

from __future__ import annotations

import pathlib
from typing import Any

from ray import serve
from ray.serve import Application

from deployments.group import GroupDeployment
from deployments.ingress import GraphIngress
from deployments.model import ModelDeployment
from modelweave.checker import check_graph
from modelweave.errors import GraphSpecError
from modelweave.spec import (
    DeploymentSettings,
    GraphSpec,
    IngressSettings,
    ServeSettings,
    dump_graph,
    load_graph,
    parse_graph,
)

#: The servicer Serve's gRPC proxy must import (the installed package provides it).
GRPC_SERVICER = "modelweave.v1.service_pb2_grpc.add_GraphServiceServicer_to_server"

#: Access logs cost CPU on small machines (RAY_NOTES); errors are still logged.
LOGGING_CONFIG = {"enable_access_log": False, "log_level": "WARNING"}


def deployment_options(settings: ServeSettings) -> dict[str, Any]:
    """Maps a node's settings to ``Deployment.options`` keyword arguments."""
    actor = settings.ray_actor_options
    ray_actor_options: dict[str, Any] = {"num_cpus": actor.num_cpus}
    if actor.num_gpus:
        ray_actor_options["num_gpus"] = actor.num_gpus
    if actor.memory:
        ray_actor_options["memory"] = actor.memory
    if actor.resources:
        ray_actor_options["resources"] = dict(actor.resources)
    options: dict[str, Any] = {
        "ray_actor_options": ray_actor_options,
        "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.queue_bound(),
        "request_router_config": {"max_backoff_s": settings.router_max_backoff_s},
        "logging_config": LOGGING_CONFIG,
        "health_check_period_s": settings.health_check_period_s,
    }
    if isinstance(settings, IngressSettings):
        # Serve's proxy answers for the ingress when even its bounded queue is full (the
        # backstop under modelweave's own admission control): a 503 that says when to retry.
        options["backpressure_config"] = {"status_code": 503, "retry_after_s": settings.backpressure_retry_after_s}
    if settings.autoscaling_config is not None:
        options["autoscaling_config"] = settings.autoscaling_config.model_dump(exclude_none=True)
    else:
        options["num_replicas"] = settings.num_replicas or 1
    if isinstance(settings, DeploymentSettings):
        options["graceful_shutdown_timeout_s"] = settings.graceful_shutdown_timeout_s
        if settings.max_replicas_per_node is not None:
            options["max_replicas_per_node"] = settings.max_replicas_per_node
    return options


def ingress_name(spec: GraphSpec) -> str:
    """Deployment name of a graph's ingress (model names are lowercase, so it cannot clash)."""
    return "Ingress"


def graph_app(spec: GraphSpec) -> Application:
    """Type-checks ``spec`` and binds its Serve application (no side effects until deployed)."""
    checked = check_graph(spec)
    deployment: Any = serve.deployment  # typed as a decorator factory; used here as a plain call
    handles: dict[str, Any] = {}
    for name, plan in checked.layout.deployments.items():
        options = deployment_options(plan.settings)
        if plan.group:
            nodes = [checked.models[m].model_dump(mode="json") for m in plan.members]
            handles[name] = deployment(GroupDeployment).options(name=name, **options).bind(nodes, plan.settings.nice)
        else:
            node = checked.models[name]
            handles[name] = deployment(ModelDeployment).options(name=name, **options).bind(node.model_dump(mode="json"))
    ingress = deployment(GraphIngress).options(name=ingress_name(spec), **deployment_options(spec.ingress))
    return ingress.bind(dump_graph(spec), handles)


def build_app(args: dict[str, Any]) -> Application:
    """Serve application builder: ``args`` holds ``graph`` (inline spec) or ``graph_path``."""
    if "graph" in args:
        spec = parse_graph(args["graph"], "serve config args.graph")
    elif "graph_path" in args:
        spec = load_graph(pathlib.Path(args["graph_path"]))
    else:
        raise GraphSpecError("application args need 'graph' (inline spec) or 'graph_path'")
    return graph_app(spec)
