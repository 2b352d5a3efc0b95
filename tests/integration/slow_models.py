"""Test-only adapters imported by Serve replicas (the session puts this folder on PYTHONPATH)."""

from __future__ import annotations

import os
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


class PerRowSlow(ModelAdapter):
    """Sleeps ``seconds`` per row of each call: a call lasts in proportion to its rows."""

    consumes = ("Text",)
    produces = "Classification"
    Params = SleepParams

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Classification]:
        time.sleep(self.params.seconds * len(batch))
        return [pb.Classification(label="slow", confidence=1.0) for _ in batch]


class Broken(ModelAdapter):
    """Always raises, to check that model bugs come back typed."""

    consumes = ("Text",)
    produces = "Classification"

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Classification]:
        raise RuntimeError("weights are corrupt")


class Counting(ModelAdapter):
    """Sleeps ``seconds`` per row and counts the rows it really ran.

    The text ``count?`` answers at once with the count as the label, so a test can see
    how much queued work a replica skipped because its caller had given up.
    """

    consumes = ("Text",)
    produces = "Classification"
    Params = SleepParams

    def load(self) -> None:
        self.ran = 0

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Classification]:
        if any(m.text.content == "count?" for m in batch):
            return [pb.Classification(label=str(self.ran), confidence=1.0) for _ in batch]
        self.ran += len(batch)
        time.sleep(self.params.seconds * len(batch))
        return [pb.Classification(label="done", confidence=1.0) for _ in batch]


class Poison(ModelAdapter):
    """Fails a whole batch when one row says ``poison``; labels rows with the largest batch seen."""

    consumes = ("Text",)
    produces = "Classification"

    def load(self) -> None:
        self.largest = 0

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Classification]:
        self.largest = max(self.largest, len(batch))
        if any(m.text.content == "poison" for m in batch):
            raise ValueError("cannot digest this row")
        return [pb.Classification(label=f"largest-batch-{self.largest}", confidence=1.0) for _ in batch]


class ProcessLabel(ModelAdapter):
    """Labels each row with the id of the process that ran it (which batch stage took the row)."""

    consumes = ("Text",)
    produces = "Classification"

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Classification]:
        return [pb.Classification(label=f"pid-{os.getpid()}", confidence=1.0) for _ in batch]


def text_as_label(message: pb.Message) -> pb.Classification:
    """The text the graph received, as a label (a batch job's result then shows it)."""
    return pb.Classification(label=message.text.content, confidence=1.0)
