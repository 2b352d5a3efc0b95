"""The executor's caller over Ray Serve deployment handles."""

from __future__ import annotations

from typing import Any

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from modelweave.errors import ModelError, ModelweaveError, Unavailable
from modelweave.executor import ModelReply
from modelweave.spec import ModelNode
from modelweave.v1 import messages_pb2 as pb


class ServeCaller:
    """Invokes model nodes through their deployment handles and types their failures.

    Args:
        handles: Deployment handle per model node name.
    """

    def __init__(self, handles: dict[str, Any]) -> None:
        self.handles = handles

    async def call(self, model: ModelNode, message: pb.Message) -> ModelReply:
        handle = self.handles[model.name]
        try:
            result: ModelReply = await handle.remote(message)
            return result
        except BackPressureError as exc:
            raise Unavailable(f"model {model.name!r} is overloaded: {exc}") from None
        except (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError) as exc:
            raise Unavailable(f"model {model.name!r} is unavailable: {type(exc).__name__}") from None
        except RayTaskError as exc:
            cause = exc.cause if exc.cause is not None else exc
            if isinstance(cause, ModelweaveError):
                raise cause from None
            raise ModelError(f"model failed: {type(cause).__name__}: {cause}") from None
