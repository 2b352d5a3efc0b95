"""Test-only adapters for the split / semantic-cache tests (replicas import them from PYTHONPATH)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from modelweave.adapters.base import ModelAdapter
from modelweave.v1 import messages_pb2 as pb


class BagEmbed(ModelAdapter):
    """Text -> Embedding: lower-cased words hashed into 64 dims (same words, same vector)."""

    consumes = ("Text",)
    produces = "Embedding"

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Embedding]:
        out = []
        for message in batch:
            values = [0.0] * 64
            for word in message.text.content.lower().replace("'", " ").split():
                values[zlib.crc32(word.strip(".,!?").encode()) % 64] += 1.0
            out.append(pb.Embedding(values=values, model="bag"))
        return out
