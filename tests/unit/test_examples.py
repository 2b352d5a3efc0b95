"""Every example graph in the repository parses and type-checks (no Ray, no weights loaded)."""

from __future__ import annotations

import pathlib

import pytest

from modelweave.checker import check_graph
from modelweave.spec import load_graph

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parents[2] / "examples").rglob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_graph_checks(path: pathlib.Path) -> None:
    graph = check_graph(load_graph(path))
    assert graph.models


def test_evolution_steps_use_the_live_node_kinds() -> None:
    kinds = {p.name: {i.node.kind for i in check_graph(load_graph(p)).nodes.values()} for p in EXAMPLES}
    assert "shadow" in kinds["5-shadow.yaml"]
    assert "split" in kinds["6-split.yaml"]
