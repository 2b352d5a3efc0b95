"""One local Ray cluster and one Serve instance shared by the whole integration session."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from modelweave.ports import free_port

REPO = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent


#: Ray's Prometheus endpoint for the session cluster.
METRICS_PORT = free_port()


@dataclass
class ServeEndpoints:
    """Where the session's Serve proxies listen."""

    http: str
    grpc: str


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """Starts a fresh local Ray (never joins a `ray start` cluster) for the session."""
    ray = pytest.importorskip("ray")
    # More logical CPUs than cores: Serve replicas and Ray Data pools here are light, and
    # Ray Data's listing step needs a whole free CPU (RAY_NOTES).
    from modelweave.serving import apply_serve_env

    apply_serve_env()  # the Serve transport `modelweave run` starts Ray with
    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=False,
        namespace="modelweave",
        _metrics_export_port=METRICS_PORT,
        # Test-only adapters live next to the tests; replicas import them from here.
        runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def metrics_port(ray_cluster: None) -> int:
    """Port of the session cluster's Prometheus endpoint."""
    return METRICS_PORT


@pytest.fixture(scope="session")
def serve_endpoints(ray_cluster: None) -> ServeEndpoints:
    """Serve with HTTP and the project's gRPC servicer on free loopback ports."""
    from ray import serve

    from deployments.app import GRPC_SERVICER

    http_port, grpc_port = free_port(), free_port()
    serve.start(
        http_options={"host": "127.0.0.1", "port": http_port},
        grpc_options={"port": grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]},
    )
    return ServeEndpoints(http=f"http://127.0.0.1:{http_port}", grpc=f"127.0.0.1:{grpc_port}")


@pytest.fixture(scope="session")
def demo_app(serve_endpoints: ServeEndpoints) -> ServeEndpoints:
    """The example graph (every node kind), deployed once for the session."""
    from ray import serve

    from deployments.app import graph_app
    from modelweave.spec import load_graph

    spec = load_graph(REPO / "examples" / "demo.yaml")
    serve.run(graph_app(spec), name=spec.name, route_prefix=f"/{spec.name}")
    return serve_endpoints
