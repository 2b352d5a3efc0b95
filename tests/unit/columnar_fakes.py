"""Adapters whose outcome depends on the row, for the columnar runner's parity tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from google.protobuf.message import Message as ProtoMessage
from pydantic import BaseModel, ConfigDict

from modelweave.adapters.base import ModelAdapter
from modelweave.errors import InvalidArgument
from modelweave.v1 import messages_pb2 as pb


class FailOnParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    marker: str = "boom"
    typed: bool = False
    label: str = ""


class FailOn(ModelAdapter):
    """Text -> Classification; a row whose text holds ``marker`` fails (alone, or the batch it is in).

    The label is the text's first word (or ``label``); confidence grows with the text's length,
    so routes on confidence split the rows.
    """

    consumes = ("Text",)
    produces = "Classification"
    blocking: ClassVar[bool] = False
    Params = FailOnParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.batches: list[int] = []

    def predict(self, batch: Sequence[pb.Message]) -> list[ProtoMessage]:
        self.batches.append(len(batch))
        out = []
        for message in batch:
            content = message.text.content
            if self.params.marker in content:
                if self.params.typed:
                    raise InvalidArgument(f"row {content!r} is refused")
                raise RuntimeError(f"cannot read {content!r}")
            words = content.split()
            out.append(pb.Classification(label=self.params.label or (words[0] if words else ""),
                                         confidence=min(1.0, len(content) / 40.0)))
        return out


class Echo(ModelAdapter):
    """Classification -> Generation: the label, and the attempt it was asked on."""

    consumes = ("Classification",)
    produces = "Generation"
    blocking: ClassVar[bool] = False

    def predict(self, batch: Sequence[pb.Message]) -> list[ProtoMessage]:
        return [pb.Generation(text=f"{m.classification.label}#{m.metadata.get('attempt', '1')}",
                              candidate=int(m.metadata.get("attempt", "1")) - 1) for m in batch]


class PassOnSecondParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    never: str = "never"


class PassOnSecond(ModelAdapter):
    """Generation -> Verdict: passes from attempt 2 on, never for a text that holds ``never``."""

    consumes = ("Generation",)
    produces = "Verdict"
    blocking: ClassVar[bool] = False
    Params = PassOnSecondParams

    def predict(self, batch: Sequence[pb.Message]) -> list[ProtoMessage]:
        out = []
        for m in batch:
            ok = m.generation.text.endswith("#2") and self.params.never not in m.text.content
            out.append(pb.Verdict(passed=ok, validator="second", reason="" if ok else "first try"))
        return out


class PerRowSleepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = 0.005


class PerRowSleep(ModelAdapter):
    """Blocking Text -> Classification that takes ``seconds`` per row of each call, one call at a
    time: a batch's walk lasts in proportion to its rows, as a CPU-bound model's does."""

    consumes = ("Text",)
    produces = "Classification"
    blocking: ClassVar[bool] = True
    Params = PerRowSleepParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.batches: list[int] = []
        self._busy = threading.Lock()

    def predict(self, batch: Sequence[pb.Message]) -> list[ProtoMessage]:
        with self._busy:
            self.batches.append(len(batch))
            time.sleep(self.params.seconds * len(batch))
        return [pb.Classification(label="slow", confidence=1.0) for _ in batch]
