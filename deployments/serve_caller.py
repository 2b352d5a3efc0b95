"""The executor's caller over Ray Serve deployment handles."""

from __future__ import annotations

from typing import Any

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from modelweave.errors import ModelError, ModelweaveError, Overloaded, ReplicaLost, Unavailable
from modelweave.executor import ModelReply
from modelweave.spec import ModelNode
from modelweave.trace import request_deadline
from modelweave.v1 import messages_pb2 as pb

#: Failures where the call did not complete because its replica went away: another
#: replica may answer, so the executor may retry them (idempotent models only).
_REPLICA_LOST = (ActorDiedError, ActorUnavailableError, RayActorError, ReplicaUnavailableError)


class ServeCaller:
    """Invokes model nodes through their deployment handles and types their failures.

    Each call carries the request's wall-clock deadline (see
    :data:`modelweave.trace.request_deadline`) so the replica skips work whose caller has
    gone. Cancelling the awaiting task (deadline, client gone) cancels the Serve request:
    Serve drops it from the caller's queue or cancels it on the replica.

    Args:
        handles: Deployment handle per model node name.
    """

    def __init__(self, handles: dict[str, Any]) -> None:
        self.handles = handles

    async def call(self, model: ModelNode, message: pb.Message) -> ModelReply:
        handle = self.handles[model.name]
        try:
            result: ModelReply = await handle.remote(message, request_deadline.get())
            return result
        except BackPressureError:
            # The model's bounded queue is full: shed (never retried; retrying adds load).
            raise Overloaded(f"model {model.name!r} is at capacity (its queue is full); retry later") from None
        except _REPLICA_LOST as exc:
            raise ReplicaLost(f"model {model.name!r} is unavailable: {type(exc).__name__}") from None
        except DeploymentUnavailableError as exc:
            raise Unavailable(f"model {model.name!r} is unavailable: {type(exc).__name__}") from None
        except RayTaskError as exc:
            cause = exc.cause if exc.cause is not None else exc
            if isinstance(cause, ModelweaveError):
                raise cause from None
            raise ModelError(f"model failed: {type(cause).__name__}: {cause}") from None
