"""Static type-checking of a graph: every edge must carry the parts the next node reads.

The checker walks the flow with the set of part types available at each point
(starting from the graph's ``input``), imports each model's adapter class to read
its signature (without loading weights), and refuses the graph with an error that
names the node path and the mismatch. It also returns the facts the executor and
the Serve builder need (model nodes by name, paths, per-node types).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from google.protobuf.descriptor import FieldDescriptor

from modelweave.adapters.base import resolve_adapter
from modelweave.errors import GraphSpecError
from modelweave.messages import FIELD_TO_PART, PART_FIELDS, full_name, part_name
from modelweave.spec import (
    AdaptiveValue,
    CacheNode,
    ChainNode,
    Condition,
    GraphSpec,
    ModelNode,
    Node,
    ParallelNode,
    RouteNode,
    ValidateNode,
)
from modelweave.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    from modelweave.layout import Layout

#: Aggregation strategies that read one part type from every branch.
_AGGREGATE_PARTS = {"vote": "Classification", "mean": "Classification", "concat": "Generation"}


@dataclass
class NodeInfo:
    """What the checker learned about one node."""

    path: str
    node: Node
    available_in: frozenset[str]
    available_out: frozenset[str]
    consumes: tuple[str, ...] = ()
    produces: str = ""
    #: Part types this node (or anything inside it) may write.
    writes: frozenset[str] = frozenset()
    #: Part types read from the node's input that are not produced inside it.
    reads: frozenset[str] = frozenset()
    #: Model nodes: a call whose replica died may be retried (adapter or node says so).
    idempotent: bool = False
    #: Model nodes: the adapter does real CPU work (runs in a thread); False for rules and glue.
    blocking: bool = True


@dataclass
class Edge:
    """A typed edge between two node paths."""

    source: str
    target: str
    types: frozenset[str]
    label: str = ""


@dataclass
class CheckedGraph:
    """A graph that passed type-checking, with per-node facts."""

    spec: GraphSpec
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    models: dict[str, ModelNode] = field(default_factory=dict)
    model_paths: dict[str, str] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    output_types: frozenset[str] = frozenset()
    #: Feedback variables declared by adaptive route conditions, by state name.
    states: dict[str, AdaptiveValue] = field(default_factory=dict)
    #: Where each model node runs (own deployment, group, ingress); set by :func:`check_graph`.
    placement: Layout | None = None

    @property
    def layout(self) -> Layout:
        """Where each model node runs (see :mod:`modelweave.layout`)."""
        if self.placement is None:
            raise GraphSpecError(f"graph {self.spec.name!r} has no layout: build it with check_graph")
        return self.placement

    def info(self, node: Node) -> NodeInfo:
        """Facts about a node object of this graph."""
        return self._by_id[id(node)]

    def __post_init__(self) -> None:
        self._by_id: dict[int, NodeInfo] = {}


def check_graph(spec: GraphSpec) -> CheckedGraph:
    """Type-checks ``spec``.

    Raises:
        GraphSpecError: naming the node path and the mismatch.
    """
    checked = CheckedGraph(spec=spec)
    try:
        available = frozenset(part_name(t) for t in spec.input)
    except GraphSpecError as exc:
        raise GraphSpecError(f"graph {spec.name!r} input: {exc}") from None
    if not available:
        raise GraphSpecError(f"graph {spec.name!r}: 'input' must name at least one message type")
    walker = _Walker(checked)
    out = walker.walk(spec.flow, spec.name, available, "input")
    for wanted in spec.output:
        try:
            short = part_name(wanted)
        except GraphSpecError as exc:
            raise GraphSpecError(f"graph {spec.name!r} output: {exc}") from None
        if short not in out:
            raise GraphSpecError(
                f"graph {spec.name!r} declares output {full_name(short)} but the flow only guarantees "
                f"{_fmt(out)}"
            )
    checked.output_types = out
    _check_feedback(checked)
    from modelweave.layout import plan_layout  # imports this module's types

    checked.placement = plan_layout(checked)
    return checked


def _check_feedback(checked: CheckedGraph) -> None:
    """Every feedback update must target a state some adaptive condition declares."""
    for info in checked.nodes.values():
        if isinstance(info.node, RouteNode):
            for rule in info.node.rules:
                for cond in rule.when:
                    var = cond.value_from
                    if var is None:
                        continue
                    seen = checked.states.get(var.state)
                    if seen is not None and seen != var:
                        raise GraphSpecError(
                            f"{info.path}: state {var.state!r} is declared twice with different bounds"
                        )
                    checked.states[var.state] = var
    for info in checked.nodes.values():
        # (state, field compared after the branch) per feedback entry; validate feedback has no field.
        if isinstance(info.node, RouteNode):
            updates: list[tuple[str, str | None]] = [(fb.state, fb.field) for fb in info.node.feedback]
        elif isinstance(info.node, ValidateNode):
            updates = [(fb.state, None) for fb in info.node.feedback]
        else:
            continue
        for i, (state, field_path) in enumerate(updates):
            if state not in checked.states:
                raise GraphSpecError(
                    f"{info.path}: feedback[{i}].state {state!r} is not declared by any "
                    "route condition's value_from"
                )
            if field_path is not None:
                _field_part(field_path, info.available_out, f"{info.path}: feedback[{i}].field")


def _fmt(types: frozenset[str] | set[str]) -> str:
    return "{" + ", ".join(sorted(full_name(t) for t in types)) + "}" if types else "{}"


class _Walker:
    def __init__(self, checked: CheckedGraph) -> None:
        self.checked = checked

    def walk(self, node: Node, parent: str, available: frozenset[str], source: str, label: str = "") -> frozenset[str]:
        path = f"{parent}/{node.name}"
        if path in self.checked.nodes:
            raise GraphSpecError(f"{path}: two sibling nodes are both named {node.name!r}")
        self.checked.edges.append(Edge(source, path, available, label))
        info = NodeInfo(path=path, node=node, available_in=available, available_out=available)
        self.checked.nodes[path] = info
        self.checked._by_id[id(node)] = info
        handler = getattr(self, f"_{node.kind}")
        out, writes, reads = handler(node, path, available, info)
        if node.fallback is not None:
            fb_out = self.walk(node.fallback, path, available, path, "fallback")
            fb = self.checked.info(node.fallback)
            out = out & fb_out
            writes = writes | fb.writes
            reads = reads | fb.reads
        info.available_out, info.writes, info.reads = out, frozenset(writes), frozenset(reads)
        return out

    def _model(self, node: ModelNode, path: str, available: frozenset[str], info: NodeInfo):
        if node.name in self.checked.models:
            raise GraphSpecError(
                f"{path}: model name {node.name!r} is already used at {self.checked.model_paths[node.name]}; "
                "model names are deployment names and must be unique in a graph"
            )
        try:
            cls, params = resolve_adapter(node.impl, node.params)
            consumes, produces = cls.signature(params)
            cls.validate_params(params)
            idempotent = node.idempotent if node.idempotent is not None else cls.is_idempotent(params)
            # Function adapters choose per node (params.blocking); classes declare it once.
            blocking = bool(getattr(cls.validate_params(params), "blocking", cls.blocking))
            consumes = tuple(part_name(c) for c in consumes)
            produces = part_name(produces)
        except GraphSpecError as exc:
            raise GraphSpecError(f"{path}: {exc.message}") from None
        missing = set(consumes) - available
        if missing:
            raise GraphSpecError(
                f"{path}: model {node.impl} consumes {_fmt(set(consumes))} but its input only has "
                f"{_fmt(available)} (missing {_fmt(missing)})"
            )
        self.checked.models[node.name] = node
        self.checked.model_paths[node.name] = path
        info.consumes, info.produces, info.idempotent = consumes, produces, idempotent
        info.blocking = blocking
        return available | {produces}, {produces}, set(consumes)

    def _chain(self, node: ChainNode, path: str, available: frozenset[str], info: NodeInfo):
        writes: set[str] = set()
        reads: set[str] = set()
        source = path
        current = available
        for step in node.steps:
            current = self.walk(step, path, current, source)
            step_info = self.checked.info(step)
            reads |= step_info.reads - writes
            writes |= step_info.writes
            source = step_info.path
        return current, writes, reads

    def _parallel(self, node: ParallelNode, path: str, available: frozenset[str], info: NodeInfo):
        outs = []
        writes: set[str] = set()
        reads: set[str] = set()
        for i, branch in enumerate(node.branches):
            outs.append(self.walk(branch, path, available, path, f"branch {i}"))
            b = self.checked.info(branch)
            writes |= b.writes
            reads |= b.reads
        agg = node.aggregate
        if agg.strategy in _AGGREGATE_PARTS:
            needed = _AGGREGATE_PARTS[agg.strategy]
            for branch, out in zip(node.branches, outs, strict=True):
                if needed not in out:
                    raise GraphSpecError(
                        f"{path}/{branch.name}: aggregate '{agg.strategy}' needs {full_name(needed)} from "
                        f"every branch, but this branch produces {_fmt(out)}"
                    )
            return available | {needed}, {needed}, reads
        common = frozenset.intersection(*outs)
        if agg.strategy == "custom":
            try:
                produced = part_name(agg.produces or "")
            except GraphSpecError as exc:
                raise GraphSpecError(f"{path}: aggregate.produces: {exc.message}") from None
            from modelweave.adapters.base import import_object

            try:
                import_object(agg.function or "")
            except GraphSpecError as exc:
                raise GraphSpecError(f"{path}: aggregate.function: {exc.message}") from None
            # aggregate() builds the output from the node's input plus the produced part;
            # branch outputs are not carried over.
            return available | {produced}, {produced}, reads
        return common, writes, reads  # first_valid: one whole branch's output

    def _route(self, node: RouteNode, path: str, available: frozenset[str], info: NodeInfo):
        writes: set[str] = set()
        reads: set[str] = set()
        route_input = available
        if node.router is not None:
            route_input = self.walk(node.router, path, available, path, "router")
            r = self.checked.info(node.router)
            if r.produces != "Classification":
                raise GraphSpecError(
                    f"{r.path}: a router model must produce {full_name('Classification')}, "
                    f"not {full_name(r.produces)}"
                )
            writes |= r.writes
            reads |= r.reads
        for i, rule in enumerate(node.rules):
            for j, cond in enumerate(rule.when):
                # Parts the router just produced are not reads of the route's input.
                reads |= _check_condition(cond, route_input, f"{path}: rules[{i}].when[{j}]") - (
                    route_input - available
                )
        outs = []
        for label, branch in node.branches.items():
            if branch is None:  # pass-through branch
                outs.append(route_input)
                continue
            outs.append(self.walk(branch, path, route_input, path, label))
            b = self.checked.info(branch)
            writes |= b.writes
            reads |= b.reads - (route_input - available)
        return frozenset.intersection(*outs), writes, reads

    def _validate(self, node: ValidateNode, path: str, available: frozenset[str], info: NodeInfo):
        # On 'refine' the target may read the previous Verdict, but only optionally:
        # the first attempt has none, so Verdict is not added to its input types.
        target_out = self.walk(node.target, path, available, path, "target")
        t = self.checked.info(node.target)
        validator_out = self.walk(node.validator, path, target_out, t.path, "validator")
        v = self.checked.info(node.validator)
        if v.produces != "Verdict":
            raise GraphSpecError(
                f"{v.path}: a validator must produce {full_name('Verdict')}, not {full_name(v.produces)}"
            )
        out = validator_out
        writes = set(t.writes) | {"Verdict"}
        reads = set(t.reads) | (set(v.reads) - set(t.writes))
        if node.escalate is not None:
            esc_out = self.walk(node.escalate, path, available | {"Verdict"}, v.path, "escalate")
            e = self.checked.info(node.escalate)
            out = (out & esc_out) | {"Verdict"}
            writes |= e.writes
            reads |= e.reads
        reads.discard("Verdict")
        return out, writes, reads

    def _cache(self, node: CacheNode, path: str, available: frozenset[str], info: NodeInfo):
        out = self.walk(node.body, path, available, path, "body")
        b = self.checked.info(node.body)
        if node.key_fields:
            for i, key in enumerate(node.key_fields):
                _field_part(key, available, f"{path}: key_fields[{i}]")
        if not node.key_fields and not b.reads:
            raise GraphSpecError(f"{path}: the cached body reads no input parts; set key_fields")
        return out, set(b.writes), set(b.reads)


def _field_part(path_expr: str, available: frozenset[str], where: str) -> tuple[str, FieldDescriptor | None]:
    """Validates a dotted envelope path like ``text.language`` against the protobuf schema."""
    head, _, rest = path_expr.partition(".")
    if head == "metadata":
        if not rest:
            raise GraphSpecError(f"{where}: field {path_expr!r} needs a key, e.g. metadata.lang")
        return "", None
    if head not in FIELD_TO_PART:
        fields = ", ".join(sorted([*PART_FIELDS.values(), "metadata"]))
        raise GraphSpecError(f"{where}: field {path_expr!r} does not start with one of {fields}")
    part = FIELD_TO_PART[head]
    if part not in available:
        raise GraphSpecError(
            f"{where}: field {path_expr!r} reads {full_name(part)}, which is not available here "
            f"(available: {_fmt(available)})"
        )
    descriptor = pb.Message.DESCRIPTOR.fields_by_name[head].message_type
    fd: FieldDescriptor | None = None
    if part == "Tensor":
        return part, None  # tensors.<name>.<field>: keys are dynamic
    for piece in rest.split(".") if rest else []:
        if descriptor is None or piece not in descriptor.fields_by_name:
            raise GraphSpecError(f"{where}: {full_name(part)} has no field {piece!r} (in {path_expr!r})")
        fd = descriptor.fields_by_name[piece]
        descriptor = fd.message_type
    return part, fd


def _check_condition(cond: Condition, available: frozenset[str], where: str) -> set[str]:
    part, fd = _field_part(cond.field, available, where)
    if fd is not None and cond.op in ("lt", "le", "gt", "ge"):
        numeric = {FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE,
                   FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64,
                   FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64}
        if fd.cpp_type not in numeric:
            raise GraphSpecError(f"{where}: operator {cond.op!r} needs a numeric field; {cond.field!r} is not")
        if cond.value is not None and not isinstance(cond.value, int | float):
            raise GraphSpecError(f"{where}: operator {cond.op!r} needs a numeric value, got {cond.value!r}")
    return {part} if part else set()
