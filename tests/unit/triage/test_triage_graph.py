"""The reference graph's serving settings: every heavy model batches requests online."""

from __future__ import annotations

from pathlib import Path

from modelweave.adapters.base import build_adapter
from modelweave.checker import check_graph
from modelweave.spec import load_graph

REPO = Path(__file__).resolve().parents[3]


def test_every_heavy_triage_model_has_dynamic_batching() -> None:
    # Heavy = a blocking model of cost >= 1 (spaCy, MiniLM): their CPU per item falls with the
    # batch size (benchmarks/adapter_batching.py), so a replica answers concurrent requests together.
    graph = check_graph(load_graph(REPO / "examples" / "triage.yaml"))
    heavy = {name: node for name, node in graph.models.items()
             if node.cost >= 1.0 and build_adapter(node.impl, node.params).blocking}
    assert {"redact", "minilm", "embed", "grounding"} <= set(heavy)
    unbatched = sorted(name for name, node in heavy.items() if node.deployment.batching is None)
    assert unbatched == []
