"""Serve's inter-deployment transport: the ingress's handle options, error mapping and the proxy env.

Fake handles stand in for Serve's (no Ray cluster); the real transport runs in every
integration test (the session cluster starts with ``modelweave.serving.SERVE_ENV``).
"""

from __future__ import annotations

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
    assert apply_serve_env(chosen) == {"RAY_SERVE_PROXY_USE_GRPC": "0"}  # the user's choice wins
