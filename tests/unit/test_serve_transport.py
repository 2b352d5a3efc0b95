"""Serve's inter-deployment transport: the ingress's handle options, error mapping and the proxy env.

Fake handles stand in for Serve's (no Ray cluster); the real transport runs in every
integration test (the session cluster starts with ``modelweave.serving.SERVE_ENV``).
"""

from __future__ import annotations

import socket
from typing import Any

import grpc
import pytest

from deployments.serve_caller import ServeCaller
from modelweave.errors import ModelError, ReplicaLost
from modelweave.serving import SERVE_ENV, apply_serve_env
from modelweave.spec import IngressSettings, ModelNode
from modelweave.v1 import messages_pb2 as pb


class FakeHandle:
    """Records ``options()`` like a DeploymentHandle and answers ``remote()`` with ``answer``."""

    def __init__(self, answer: Any = None, options: dict[str, Any] | None = None) -> None:
        self.answer = answer
        self.opts = dict(options or {})

    def options(self, **kwargs: Any) -> FakeHandle:
        return FakeHandle(self.answer, {**self.opts, **kwargs})

    async def _reply(self) -> Any:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def remote(self, *_args: Any) -> Any:
        return self._reply()


class FakeRpcError(grpc.aio.AioRpcError):
    """An AioRpcError with a chosen code, as a gRPC call that failed on the wire raises it."""

    def __init__(self, code: grpc.StatusCode, details: str = "boom") -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def test_grpc_is_the_default_transport_and_actor_is_accepted():
    assert IngressSettings().transport == "grpc"
    assert IngressSettings.model_validate({"transport": "actor"}).transport == "actor"
    with pytest.raises(ValueError, match="transport"):
        IngressSettings.model_validate({"transport": "http"})


@pytest.mark.parametrize(("transport", "by_reference"), [("grpc", False), ("actor", None)])
def test_handles_get_the_transport_once(transport: str, by_reference: bool | None):
    caller = ServeCaller({"a": FakeHandle(), "b": FakeHandle()}, transport=transport)  # type: ignore[arg-type]
    for handle in caller.handles.values():
        assert handle.opts.get("_by_reference") == by_reference
    # call_many's method handle is derived from the transport's handle, so it keeps the option.
    assert caller.handles["a"].options(method_name="call_many").opts.get("_by_reference") == by_reference


async def test_a_call_answers_through_the_grpc_handle():
    reply = pb.Classification(label="positive", confidence=0.9)
    caller = ServeCaller({"m": FakeHandle(reply)}, transport="grpc")
    assert await caller.call(ModelNode(name="m", impl="x:Y"), pb.Message()) == reply


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED])
async def test_a_replica_lost_on_the_wire_is_replica_lost(code: grpc.StatusCode):
    caller = ServeCaller({"m": FakeHandle(FakeRpcError(code))}, transport="grpc")
    with pytest.raises(ReplicaLost, match=f"'m' is unavailable: gRPC {code.name}"):
        await caller.call(ModelNode(name="m", impl="x:Y"), pb.Message())


async def test_other_grpc_failures_are_model_errors_with_the_code():
    caller = ServeCaller({"m": FakeHandle(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too big"))},
                         transport="grpc")
    with pytest.raises(ModelError, match="RESOURCE_EXHAUSTED: too big"):
        await caller.call(ModelNode(name="m", impl="x:Y"), pb.Message())


def test_serve_env_fills_only_what_is_unset():
    env: dict[str, str] = {}
    assert apply_serve_env(env) == SERVE_ENV == env
    chosen = {"RAY_SERVE_PROXY_USE_GRPC": "0"}
    assert apply_serve_env(chosen)["RAY_SERVE_PROXY_USE_GRPC"] == "0"  # the user's choice wins
    assert chosen == {**SERVE_ENV, "RAY_SERVE_PROXY_USE_GRPC": "0"}


def test_cluster_configs_set_the_same_serve_env():
    """`ray start` and KubeRay clusters get what `modelweave run` gives its embedded Ray."""
    import pathlib

    import yaml

    root = pathlib.Path(__file__).resolve().parents[2]
    manifest = yaml.safe_load((root / "cluster" / "rayservice-triage.yaml").read_text())
    spec = manifest["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        env = {e["name"]: e.get("value") for c in group["template"]["spec"]["containers"] for e in c.get("env", [])}
        assert {k: env.get(k) for k in SERVE_ENV} == SERVE_ENV
    start = next(line for line in (root / "cluster" / "README.md").read_text().splitlines()
                 if line.startswith("export RAY_SERVE_"))
    assert dict(pair.split("=", 1) for pair in start.split()[1:]) == SERVE_ENV


def _graph(ingress: dict[str, Any] | None = None, name: str = "g") -> Any:
    from modelweave.spec import parse_graph

    return parse_graph({"name": name, "ingress": ingress or {},
                        "flow": {"kind": "model", "name": "m", "impl": "modelweave.examples.rules:Normaliser"}})


def test_direct_ingress_takes_one_graph_on_an_embedded_ray_with_any_number_of_ingress_replicas():
    from modelweave.serving import direct_ingress_problem

    assert direct_ingress_problem([_graph()], None) is None
    assert direct_ingress_problem([_graph({"num_replicas": 3})], None) is None
    assert "drop --address" in (direct_ingress_problem([_graph()], "10.0.0.1:6379") or "")
    assert "one graph (got 2)" in (direct_ingress_problem([_graph(), _graph(name="h")], None) or "")
    autoscaled = _graph({"autoscaling_config": {"min_replicas": 1, "max_replicas": 4}})
    assert direct_ingress_problem([autoscaled], None) is None
    assert [g.ingress.most_replicas() for g in (_graph(), _graph({"num_replicas": 3}), autoscaled)] == [1, 3, 4]


def test_direct_ingress_ranges_hold_a_slot_per_replica_and_every_replica_shares_the_first_ports():
    from deployments.direct_ingress import shared_ports
    from modelweave.serving import SHARED_PORTS_ENV, direct_ingress_env

    env = direct_ingress_env(8000, 9000)
    assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    # Serve allocates from [min, max): a slot per replica plus one for a replacement starting
    # before its predecessor is gone; the ports actually bound are the first ones, shared.
    for proto, low, high in (("HTTP", "8000", "8002"), ("GRPC", "9000", "9002")):
        assert env[f"RAY_SERVE_DIRECT_INGRESS_MIN_{proto}_PORT"] == low
        assert env[f"RAY_SERVE_DIRECT_INGRESS_MAX_{proto}_PORT"] == high
    assert direct_ingress_env(8000, 9000, replicas=4)["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] == "8005"
    assert shared_ports(env) == (8000, 9000) and env[SHARED_PORTS_ENV] == "8000:9000"
    assert shared_ports({}) is None
    with pytest.raises(ValueError, match=SHARED_PORTS_ENV):
        shared_ports({SHARED_PORTS_ENV: "8000"})
    assert env["RAY_SERVE_PORT_QUARANTINE_S"] == "0"  # a restarted replica takes the same port at once


def test_a_port_another_process_listens_on_is_refused_before_ray_starts_and_a_closing_one_is_not():
    from modelweave.serving import direct_ingress_ports_taken

    with socket.socket() as taken, socket.socket() as free:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        free.bind(("127.0.0.1", 0))
        free_port = free.getsockname()[1]
        free.close()
        problem = direct_ingress_ports_taken("127.0.0.1", taken.getsockname()[1], free_port)
        assert problem is not None and f"HTTP port {taken.getsockname()[1]}" in problem
        assert direct_ingress_ports_taken("127.0.0.1", free_port, free_port) is None
