"""Test-only adapter for tests/integration/test_otel_serve.py (imported by Serve replicas from PYTHONPATH)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from modelweave.adapters.base import ModelAdapter
from modelweave.trace import trace_headers
from modelweave.v1 import messages_pb2 as pb


class TraceEcho(ModelAdapter):
    """Labels each envelope with the ``traceparent`` an outgoing HTTP call of this model would send."""

    consumes = ("Text",)
    produces = "Classification"
    blocking: ClassVar[bool] = True  # runs in a thread, as real HTTP adapters do

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Classification]:
        return [pb.Classification(label=trace_headers(m).get("traceparent", ""), confidence=1.0) for m in batch]
