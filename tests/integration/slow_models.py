"""Test-only adapters imported by Serve replicas (the session puts this folder on PYTHONPATH)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from modelweave.adapters.base import ModelAdapter
from modelweave.v1 import messages_pb2 as pb


class SleepParams(BaseModel):
    """Parameters of :class:`SlowLabel`."""

    model_config = ConfigDict(extra="forbid")
    seconds: float = 0.5


class SlowLabel(ModelAdapter):
    """Sleeps, then labels: stands in for a heavy model to provoke overload and deadlines."""

    consumes = ("Text",)
    produces = "Classification"
    Params = SleepParams

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Classification]:
        time.sleep(self.params.seconds)
        return [pb.Classification(label="slow", confidence=1.0) for _ in batch]


class Broken(ModelAdapter):
    """Always raises, to check that model bugs come back typed."""

    consumes = ("Text",)
    produces = "Classification"

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Classification]:
        raise RuntimeError("weights are corrupt")
