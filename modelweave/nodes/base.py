"""What a node kind is: one class that knows its spec, type rule, run step, picture and ablation.

Every kind of the flow (``model``, ``chain``, ``parallel``, ``route``, ``validate``,
``cache``, ``split``, ``shadow``) is one module of this package with one
:class:`NodeKind` subclass, registered in :mod:`modelweave.nodes`. The graph's schema
(:mod:`modelweave.spec`), the type checker, the executor, the layout's hop count, the
pictures (:mod:`modelweave.draw_graph`) and the evolutionary ablations all dispatch on
``node.kind`` through the registry, so adding a kind is one new module plus one
registry line.

Kind modules import only spec-level modules at import time; the checker's walker and
the executor reach them as arguments (no import cycles).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from modelweave.spec_base import AdaptiveValue, NodeBase

if TYPE_CHECKING:
    from modelweave.checker import CheckedGraph, NodeInfo, Walker
    from modelweave.draw_graph import DrawingBuilder, Pending
    from modelweave.executor import Executor
    from modelweave.layout import Alt, Layout
    from modelweave.spec import Node
    from modelweave.trace import RequestContext
    from modelweave.v1 import messages_pb2 as pb

#: (part types available after the node, part types it may write, part types it reads from its input).
TypeRule = tuple[frozenset[str], set[str], set[str]]
#: A slot of a node given as plain data: (slot name, container, key); ``container[key]`` is the child.
DictSlot = tuple[str, Any, Any]


class NodeKind:
    """One node kind. Subclasses set ``kind`` and ``spec`` and override what applies."""

    #: The ``kind:`` tag in graph files.
    kind: ClassVar[str]
    #: The kind's pydantic spec model (a :class:`~modelweave.spec_base.NodeBase` subclass).
    spec: ClassVar[type[NodeBase]]
    #: Spec fields typed ``Node`` (the tagged union, not a list or mapping of them): pydantic puts the
    #: kind tag after them in error locations, which :func:`modelweave.spec.parse_graph` drops.
    node_fields: ClassVar[tuple[str, ...]] = ()
    #: Box of the kind in pictures: Mermaid shape delimiters, (fill, outline) colours, hexagon or rounded box.
    shape: ClassVar[tuple[str, str]] = ('["', '"]')
    colour: ClassVar[tuple[str, str]] = ("#f1f5f9", "#475569")
    hexagon: ClassVar[bool] = False
    #: Whether the node gets a box of its own in pictures; kinds that only sequence their children
    #: (chain, validate) get one only when a fallback must hang from it.
    boxed: ClassVar[bool] = True

    # -- structure --------------------------------------------------------------------

    def children(self, node: Any) -> Iterator[tuple[str, Node]]:
        """(edge label, child node) of every child slot, in walk order; ``fallback`` excluded."""
        return iter(())

    def dict_children(self, data: dict[str, Any]) -> Iterator[DictSlot]:
        """Child slots of the node given as plain data (parsed YAML); ``fallback`` excluded."""
        return iter(())

    # -- checking ---------------------------------------------------------------------

    def check(self, walker: Walker, node: Any, path: str, available: frozenset[str], info: NodeInfo) -> TypeRule:
        """Type-checks the node given the part types ``available`` on its input edge.

        Walks children with ``walker.walk`` and fills kind facts into ``info``.

        Raises:
            GraphSpecError: naming ``path`` and the mismatch.
        """
        raise NotImplementedError

    def adaptive_values(self, node: Any) -> list[AdaptiveValue]:
        """Feedback variables the node reads (declares), e.g. adaptive route thresholds."""
        return []

    def feedback_updates(self, node: Any) -> list[tuple[str, str | None]]:
        """(state, envelope field compared after the node or None) of each feedback update the node makes."""
        return []

    # -- running ----------------------------------------------------------------------

    async def run(self, ex: Executor, node: Any, msg: pb.Message, ctx: RequestContext, path: str,
                  attempt: int) -> pb.Message:
        """Runs the node on ``msg`` (which it may update in place) and returns the output envelope."""
        raise NotImplementedError

    # -- pictures ---------------------------------------------------------------------

    def draw_lines(self, node: Any, info: NodeInfo, graph: CheckedGraph) -> list[str]:
        """Text lines of the node's box (name first)."""
        return [node.name, node.kind]

    def draw(self, builder: DrawingBuilder, node: Any, path: str, info: NodeInfo, pending: list[Pending],
             entry: str | None) -> tuple[str, list[Pending]]:
        """Draws the node's inside from its box ``entry`` (reached by ``pending``).

        Returns the node's entry box and the edges that leave it (to be connected to whatever
        comes next). The default fans out to every child and rejoins after them.
        """
        from modelweave.draw_graph import Pending

        assert entry is not None
        exits: list[Pending] = []
        for label, child in self.children(node):
            c_path = f"{path}/{child.name}"
            _, c_exits = builder.enter(child, c_path, [Pending(entry, info.available_in, "branch", label,
                                                               builder.share(c_path))])
            exits += c_exits
        return entry, exits or [Pending(entry, info.available_out, share=builder.rest(path, node))]

    # -- layout, evolution ------------------------------------------------------------

    def hop_alternatives(self, node: Any, layout: Layout, limit: int, alts: Callable[[Node], list[Alt]],
                         product: Callable[[list[list[Alt]], int], list[Alt]]) -> list[Alt]:
        """Every way a request can pass through the node: (route choices, Serve hops), at most ``limit``."""
        return product([alts(child) for _label, child in self.children(node)], limit)

    def ablation(self, data: dict[str, Any]) -> tuple[dict[str, Any] | None, str] | None:
        """What stands in for the node when it is removed (None = drop it), or None if it cannot go alone."""
        return None
