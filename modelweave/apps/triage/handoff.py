"""The human hand-off: where the triage graph sends what its models should not answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from modelweave.adapters.base import ModelAdapter
from modelweave.v1 import messages_pb2 as pb


class HandoffParams(BaseModel):
    """Parameters of :class:`Handoff`."""

    model_config = ConfigDict(extra="forbid")
    message: str = "Thanks for your message. A member of our support team will reply to you personally."
    reason: str = "needs a human"


class Handoff(ModelAdapter):
    """Text -> Generation: a fixed reply that marks the conversation for a person.

    ``Generation.source`` is ``human:<reason>`` so clients and metrics can tell hand-offs
    (e.g. ``human:non-english``, ``human:blocked``, ``human:ungrounded``) apart.
    """

    consumes = ("Text",)
    produces = "Generation"
    blocking: ClassVar[bool] = False
    Params = HandoffParams

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Generation]:
        return [pb.Generation(text=self.params.message, source=f"human:{self.params.reason}") for _ in batch]
