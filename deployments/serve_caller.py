"""The executor's caller over Ray Serve deployment handles."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Literal, TypeVar

import grpc
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from modelweave.errors import ModelError, ModelweaveError, Overloaded, ReplicaLost, Unavailable
from modelweave.executor import ModelReply
from modelweave.layout import Layout
from modelweave.local import LocalCaller
from modelweave.model_calls import Outcome
from modelweave.spec import ModelNode
from modelweave.trace import request_deadline, request_trace
from modelweave.v1 import messages_pb2 as pb

#: Failures where the call did not complete because its replica went away: another
#: replica may answer, so the executor may retry them (idempotent models only).
_REPLICA_LOST = (ActorDiedError, ActorUnavailableError, RayActorError, ReplicaUnavailableError)

#: gRPC codes of an inter-deployment call that mean the replica went away mid-call (Serve
#: itself turns UNAVAILABLE before the call was accepted into a retry on another replica).
_GRPC_LOST = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED})

_T = TypeVar("_T")


class ServeCaller:
    """Invokes model nodes through their deployment handles and types their failures.

    Each call carries the request's wall-clock deadline (see
    :data:`modelweave.trace.request_deadline`) so the replica skips work whose caller has
    gone, and its W3C trace context
    (:data:`modelweave.trace.request_trace`). Cancelling the awaiting task (deadline, client
    gone) cancels the Serve request: Serve drops it from the caller's queue or cancels it on
    the replica.

    Args:
        handles: Deployment handle per deployment name (per model node name without ``layout``).
        layout: Where each model runs (see :mod:`modelweave.layout`); None: every model
            node is its own deployment.
        local: Caller of the models that run inside this (the ingress) process.
        transport: ``grpc``: Serve's inter-deployment gRPC (``_by_reference=False``: the
            request goes to the replica's own gRPC server and the answer comes back on the
            same call); ``actor``: Ray actor calls and the object store (Serve's default).
            Measured on the reference app (2 cores, 16 clients): gRPC cut the CPU of all
            Ray processes from ~37 to ~31 ms per request (benchmarks/PERFORMANCE_LOG.md).
    """

    def __init__(self, handles: dict[str, Any], layout: Layout | None = None, local: LocalCaller | None = None,
                 transport: Literal["grpc", "actor"] = "actor") -> None:
        if transport == "grpc":
            handles = {name: handle.options(_by_reference=False) for name, handle in handles.items()}
        self.handles = handles
        self.layout = layout
        self.local = local
        # One options() handle per group, made once: each handle without a router builds its own.
        self._many: dict[str, Any] = {}

    async def call(self, model: ModelNode, message: pb.Message) -> ModelReply:
        if self.local is not None and model.name in self.local.adapters:
            return await self.local.call(model, message)
        home = self._home(model.name)
        handle = self.handles[home]
        if home == model.name and not self._grouped(home):
            # The W3C trace context goes along for adapters that call out (modelweave.trace.trace_headers).
            return await self._typed(model.name, handle.remote(message, request_deadline.get(), request_trace.get()))
        return await self._typed(model.name, handle.remote(message, request_deadline.get(), model.name,
                                                           request_trace.get()))

    async def call_many(self, models: Sequence[ModelNode], message: pb.Message) -> list[Outcome]:
        """Sends a run of consecutive members of one group as one call (see :mod:`modelweave.group_calls`)."""
        names = [m.name for m in models]
        home = self._home(names[0])
        handle = self._many.get(home)
        if handle is None:
            handle = self._many[home] = self.handles[home].options(method_name="call_many")
        return await self._typed(names[0], handle.remote(message, request_deadline.get(), names, request_trace.get()))

    def _home(self, name: str) -> str:
        home = self.layout.home.get(name, name) if self.layout is not None else name
        if home is None:
            raise ModelError(f"model {name!r} runs in the ingress but is not loaded there")
        return home

    def _grouped(self, home: str) -> bool:
        plan = self.layout.deployments.get(home) if self.layout is not None else None
        return plan is not None and plan.group

    async def _typed(self, name: str, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except BackPressureError:
            # The model's bounded queue is full: shed (never retried; retrying adds load).
            raise Overloaded(f"model {name!r} is at capacity (its queue is full); retry later") from None
        except _REPLICA_LOST as exc:
            raise ReplicaLost(f"model {name!r} is unavailable: {type(exc).__name__}") from None
        except DeploymentUnavailableError as exc:
            raise Unavailable(f"model {name!r} is unavailable: {type(exc).__name__}") from None
        except grpc.aio.AioRpcError as exc:
            # gRPC transport only: what Serve did not already turn into one of the errors above.
            if exc.code() in _GRPC_LOST:
                raise ReplicaLost(f"model {name!r} is unavailable: gRPC {exc.code().name}") from None
            raise ModelError(f"model {name!r} call failed: gRPC {exc.code().name}: {exc.details()}") from None
        except RayTaskError as exc:
            cause = exc.cause if exc.cause is not None else exc
            if isinstance(cause, ModelweaveError):
                raise cause from None
            raise ModelError(f"model failed: {type(cause).__name__}: {cause}") from None
