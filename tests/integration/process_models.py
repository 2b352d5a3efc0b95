"""An adapter for the ``inline: process`` tests on Serve: it names its process, or kills it.

Replicas import it from this directory (the session cluster's ``PYTHONPATH``); their child
processes get the replica's ``sys.path``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import ClassVar

from google.protobuf.message import Message as ProtoMessage

from modelweave.adapters.base import ModelAdapter
from modelweave.v1 import messages_pb2 as pb


class WhereAmI(ModelAdapter):
    """Text -> Classification labelled with this process's pid; the text ``"crash"`` kills the process.

    Every row takes 20 ms, so calls are in flight when a test kills the process.
    """

    consumes = ("Text",)
    produces = "Classification"
    blocking: ClassVar[bool] = True

    def load(self) -> None:
        pass

    def predict(self, batch: Sequence[pb.Message]) -> list[ProtoMessage]:
        out: list[ProtoMessage] = []
        for m in batch:
            if m.text.content == "crash":
                os._exit(3)
            time.sleep(0.02)
            out.append(pb.Classification(label=str(os.getpid()), confidence=1.0))
        return out
