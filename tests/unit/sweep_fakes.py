"""Adapters for the threshold-sweep tests: the input text says what each tier answers.

A row's text is ``"<confidence> <cheap label> <expensive label>"``, e.g. ``"0.42 neg pos"``:
:class:`Cheap` answers the cheap label with that confidence, :class:`Expensive` the other one.
Graphs name them ``sweep_fakes:Cheap`` (``tests/unit`` is on ``sys.path``).
"""

from __future__ import annotations

from collections.abc import Sequence

from modelweave.adapters.base import ModelAdapter
from modelweave.v1 import messages_pb2 as pb


def _fields(message: pb.Message) -> tuple[float, str, str]:
    confidence, cheap, expensive = message.text.content.split()
    return float(confidence), cheap, expensive


class Cheap(ModelAdapter):
    """Text -> Classification: the row's cheap label and confidence."""

    consumes = ("Text",)
    produces = "Classification"
    blocking = False

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Classification]:
        """Reads the answer from the text."""
        out = []
        for m in batch:
            confidence, cheap, _ = _fields(m)
            out.append(pb.Classification(label=cheap, confidence=confidence, model="cheap"))
        return out


class Expensive(ModelAdapter):
    """Text -> Classification: the row's expensive label."""

    consumes = ("Text",)
    produces = "Classification"
    blocking = False

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Classification]:
        """Reads the answer from the text."""
        return [pb.Classification(label=_fields(m)[2], confidence=0.99, model="expensive") for m in batch]
