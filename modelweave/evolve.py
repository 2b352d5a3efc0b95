"""Graph variants for the evolutionary workflow: what changes when one node is removed.

``ablations(spec)`` returns, for every node that can be taken out while the graph
still type-checks, a variant without it (each kind's rule is its ``NodeKind.ablation``):

* a step of a chain is dropped;
* a ``validate`` node is replaced by its target (no validator, no loop);
* a ``cache`` node is replaced by its body;
* a ``route`` node is replaced by its default branch (dropped when that is a pass-through);
* a ``parallel`` node is replaced by its first branch.

``modelweave eval --ablate`` runs these next to the full graph, so each node's
contribution to quality, latency and compute is measured on the same data.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from modelweave.checker import check_graph
from modelweave.errors import GraphSpecError
from modelweave.nodes import KINDS
from modelweave.spec import GraphSpec, dump_graph, parse_graph


@dataclass
class Variant:
    """A graph variant and how it differs from the original."""

    removed: str
    description: str
    spec: GraphSpec


def _children(node: dict[str, Any]) -> Iterator[tuple[str, Any, Any]]:
    """(slot name, container, key) of every child node slot."""
    yield from KINDS[node["kind"]].dict_children(node)
    if node.get("fallback"):
        yield "fallback", node, "fallback"


def _walk(node: dict[str, Any], path: str, container: Any, key: Any, parent: dict[str, Any] | None
          ) -> Iterator[tuple[str, dict[str, Any], Any, Any, dict[str, Any] | None]]:
    yield path, node, container, key, parent
    for _slot, sub_container, sub_key in _children(node):
        child = sub_container[sub_key]
        yield from _walk(child, f"{path}/{child['name']}", sub_container, sub_key, node)


def _replacement(node: dict[str, Any]) -> tuple[dict[str, Any] | None, str] | None:
    """What stands in for ``node`` when it is removed (None = drop), or None if not removable alone."""
    return KINDS[node["kind"]].ablation(node)


def _drop_orphan_feedback(data: dict[str, Any]) -> None:
    """Removing an adaptive route also removes the feedback updates that only it read."""
    nodes = [n for _p, n, _c, _k, _par in _walk(data["flow"], "", None, None, None)]
    declared = {cond["value_from"]["state"] for n in nodes
                for rule in n.get("rules", []) for cond in rule["when"] if cond.get("value_from")}
    for n in nodes:
        if n.get("feedback"):
            n["feedback"] = [u for u in n["feedback"] if u["state"] in declared]


def ablations(spec: GraphSpec) -> list[Variant]:
    """Every single-node removal of ``spec`` that still type-checks."""
    base = dump_graph(spec)
    variants: list[Variant] = []
    for path, node, container, _key, parent in list(_walk(base["flow"], f"{spec.name}/{base['flow']['name']}",
                                                         None, None, None)):
        candidates: list[tuple[Any, str]] = []
        in_chain = parent is not None and parent["kind"] == "chain" and container is parent["steps"]
        replacement = _replacement(node)
        if replacement is not None:
            candidates.append(replacement)
        elif in_chain:
            candidates.append((None, "step removed"))
        for new, description in candidates:
            data = copy.deepcopy(base)
            # Re-find the same slot in the copy by walking it in the same order.
            for p2, _n2, c2, k2, par2 in _walk(data["flow"], f"{spec.name}/{data['flow']['name']}", None, None, None):
                if p2 != path:
                    continue
                if c2 is None:  # the root flow itself
                    if new is None:
                        break
                    data["flow"] = copy.deepcopy(new)
                elif new is None:
                    if not (par2 and par2["kind"] == "chain" and len(c2) > 1):
                        break
                    del c2[k2]
                else:
                    c2[k2] = copy.deepcopy(new)
                _drop_orphan_feedback(data)
                try:
                    variant = parse_graph(data, f"{spec.name} without {path}")
                    check_graph(variant)
                except GraphSpecError:
                    break
                variants.append(Variant(removed=path, description=description, spec=variant))
                break
    return variants
