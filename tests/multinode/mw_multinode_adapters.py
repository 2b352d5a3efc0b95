"""A test-only adapter that says which Ray node answered (imported by replicas via PYTHONPATH)."""

from __future__ import annotations

from collections.abc import Sequence

from modelweave.adapters.base import ModelAdapter
from modelweave.v1 import messages_pb2 as pb


class NodeTag(ModelAdapter):
    """Text -> Generation whose ``source`` is the id of the Ray node running this replica."""

    consumes = ("Text",)
    produces = "Generation"
    blocking = False

    def load(self) -> None:
        """Reads the node id once (the replica never moves)."""
        import ray

        self._node = ray.get_runtime_context().get_node_id()

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Generation]:
        """One Generation per message, tagged with the node id."""
        return [pb.Generation(text="ok", source=self._node) for _ in batch]
