"""Adapters for the child-process tests (``inline: process``): they crash, fail to load, burn CPU.

Imported by path (``process_fakes:Crashy``) in a child process; ``conftest.py`` puts this
directory on ``sys.path`` and :class:`~modelweave.process_isolation.ProcessAdapter` hands
the parent's ``sys.path`` to the child.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import ClassVar

from google.protobuf.message import Message as ProtoMessage
from pydantic import BaseModel, ConfigDict

from modelweave.adapters.base import ModelAdapter
from modelweave.errors import InvalidArgument
from modelweave.v1 import messages_pb2 as pb


class CrashyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    busy_ms: float = 0.0


class Crashy(ModelAdapter):
    """Text -> Classification labelled with the text; the process dies on ``"crash"``.

    ``"hang"`` sleeps for two minutes, ``"invalid"`` raises a typed error, ``"oops"`` a plain
    one, ``"strange"`` a typed one that does not pickle, ``"pid"`` answers with the process id,
    ``"nice"`` with its niceness; each call first burns ``busy_ms`` of CPU per row.
    """

    consumes = ("Text",)
    produces = "Classification"
    blocking: ClassVar[bool] = True
    Params = CrashyParams

    def load(self) -> None:
        pass

    def predict(self, batch: Sequence[pb.Message]) -> list[ProtoMessage]:
        out: list[ProtoMessage] = []
        for m in batch:
            end = time.thread_time() + self.params.busy_ms / 1000.0
            while time.thread_time() < end:
                pass
            text = m.text.content
            if text == "crash":
                os._exit(3)  # a native crash, as far as the parent can tell
            if text == "hang":
                time.sleep(120)  # a model stuck on one input
            if text == "invalid":
                raise InvalidArgument("text.content: 'invalid' is refused")
            if text == "oops":
                raise ValueError("oops")
            if text == "strange":

                class Strange(InvalidArgument):  # local, so it cannot be pickled back to the parent
                    pass

                raise Strange("strange input")
            label = {"pid": str(os.getpid()), "nice": str(os.nice(0))}.get(text, text)
            out.append(pb.Classification(label=label, confidence=1.0))
        return out

    def health(self) -> None:
        pass


class NoLoad(ModelAdapter):
    """Fails in ``load``, as a model whose weights are missing does."""

    consumes = ("Text",)
    produces = "Classification"

    def load(self) -> None:
        raise FileNotFoundError("weights.bin is missing")

    def predict(self, batch: Sequence[pb.Message]) -> list[ProtoMessage]:
        raise AssertionError("never loaded")
