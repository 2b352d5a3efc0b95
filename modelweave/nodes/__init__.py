"""Node kinds of the flow, one module each; :data:`KINDS` maps a ``kind:`` tag to its :class:`NodeKind`.

Adding a kind: write ``modelweave/nodes/<kind>.py`` with its spec model and a
:class:`NodeKind` subclass, and add it to :data:`_ALL` below. The graph schema, checker,
executor, layout, drawing and ablations pick it up from here.
"""

from __future__ import annotations

from typing import Any

from modelweave.nodes.base import NodeKind
from modelweave.nodes.cache import CacheKind
from modelweave.nodes.chain import ChainKind
from modelweave.nodes.model import ModelKind
from modelweave.nodes.parallel import ParallelKind
from modelweave.nodes.route import RouteKind
from modelweave.nodes.shadow import ShadowKind
from modelweave.nodes.split import SplitKind
from modelweave.nodes.validate import ValidateKind

_ALL: tuple[NodeKind, ...] = (
    ModelKind(), ChainKind(), ParallelKind(), RouteKind(), ValidateKind(), CacheKind(),
    SplitKind(),
    ShadowKind(),
)

#: Every node kind by its ``kind:`` tag, in schema order.
KINDS: dict[str, NodeKind] = {k.kind: k for k in _ALL}


def kind_of(node: Any) -> NodeKind:
    """The :class:`NodeKind` of a spec node object."""
    return KINDS[node.kind]


__all__ = ["KINDS", "NodeKind", "kind_of"]
