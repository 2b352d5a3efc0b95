"""Graph specification: pydantic models for the YAML graph file and its Python builder.

Everything here is validated before any side effect (no Ray, no model loading).
The node kinds' spec models live in :mod:`modelweave.nodes` (one module per kind) and
are assembled here into the ``Node`` union; this module re-exports them, so users and
the rest of the code import every spec model from here. Type-checking of edges lives in
:mod:`modelweave.checker`.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from modelweave.auth import AuthSettings
from modelweave.errors import GraphSpecError
from modelweave.nodes import KINDS
from modelweave.nodes.cache import CacheNode
from modelweave.nodes.chain import ChainNode
from modelweave.nodes.model import ModelNode
from modelweave.nodes.parallel import AggregateSpec, ParallelNode
from modelweave.nodes.route import ChangeFeedback, RouteNode, RouteRule
from modelweave.nodes.split import SplitNode
from modelweave.nodes.validate import FeedbackUpdate, ValidateNode
from modelweave.spec_base import (
    _NAME_RE,
    NAME_PATTERN,
    ActorOptions,
    AdaptiveValue,
    AutoscalingSettings,
    BatchingSettings,
    BatchOverrides,
    Condition,
    DeploymentSettings,
    NodeBase,
    Operator,
    ServeSettings,
    _Strict,
    queue_bound,
)

if TYPE_CHECKING:
    # For type checkers a node is any NodeBase; narrow with isinstance on the kind's model.
    Node = NodeBase
else:
    #: Any node of the flow: a union of every registered kind's spec model, tagged by ``kind``.
    Node = Annotated[Union[tuple(k.spec for k in KINDS.values())], Field(discriminator="kind")]  # noqa: UP007

__all__ = [
    "NAME_PATTERN", "ActorOptions", "AdaptiveValue", "AdmissionSettings", "AggregateSpec", "AutoscalingSettings",
    "BatchOverrides", "BatchingSettings", "CacheNode", "ChainNode", "ChangeFeedback", "Condition",
    "DeploymentSettings", "FeedbackUpdate", "GraphSpec", "IngressSettings", "Limits", "ModelNode", "Node",
    "NodeBase", "Operator", "ParallelNode", "RouteNode", "RouteRule", "ServeSettings", "SplitNode", "ValidateNode",
    "dump_graph", "load_graph", "parse_graph", "queue_bound",
]


class Limits(_Strict):
    """Request limits enforced by the ingress."""

    max_request_bytes: int = Field(1 << 20, ge=1024)
    max_text_chars: int = Field(20_000, ge=1)
    max_timeout_ms: int = Field(600_000, ge=1)
    # Hostile-input bounds, checked identically for HTTP and gRPC (codecs.check_request).
    max_json_depth: int = Field(32, ge=4, le=200)
    max_embedding_values: int = Field(8192, ge=1)
    max_tensors: int = Field(8, ge=0)
    max_tensor_bytes: int = Field(1 << 20, ge=0, description="per tensor")
    max_metadata_entries: int = Field(32, ge=0)
    max_metadata_key_chars: int = Field(64, ge=1)
    max_metadata_value_chars: int = Field(1024, ge=1)
    undeclared_parts: Literal["refuse", "drop"] = Field(
        "refuse", description="input parts the graph does not declare in `input`: refuse (400) or drop")


class AdmissionSettings(_Strict):
    """Admission control of each ingress replica (see :mod:`modelweave.admission`).

    Requests beyond ``max_concurrent`` running graphs wait in a queue of ``max_queued``;
    beyond that, or when their deadline cannot be met, they are answered at once with
    HTTP 503 + ``Retry-After`` / gRPC UNAVAILABLE. Choose ``max_concurrent`` near the
    concurrency at which the graph reaches its throughput: more only adds latency.
    """

    max_concurrent: int = Field(32, ge=1)
    max_queued: int = Field(64, ge=0)
    trust_request_start: bool = Field(
        False, description="count the time before the ingress against the request's deadline, from the "
                           "X-Request-Start header (t=<Unix time in s, ms or us>) a proxy in front sets; only "
                           "behind a proxy whose clock agrees with the ingress's (a clock behind by more than a "
                           "request's budget makes every request look expired)")


class IngressSettings(ServeSettings):
    """Serve settings of the graph's ingress deployment."""

    max_ongoing_requests: int = Field(256, ge=1)
    max_queued_requests: int | None = Field(
        None, ge=-1, description="requests queued per proxy; default max_ongoing_requests x max replicas")
    admission: AdmissionSettings = AdmissionSettings()
    backpressure_retry_after_s: float = Field(
        1.0, ge=0, le=3600,
        description="Retry-After of the 503 that Serve's proxy answers itself once the ingress's own queue "
                    "(max_ongoing_requests) and the proxy's (max_queued_requests) are full")
    auth: AuthSettings | None = Field(None, description="token authentication (HTTP and gRPC)")
    transport: Literal["grpc", "actor"] = Field(
        "grpc",
        description="how the ingress calls the model deployments: Serve's inter-deployment gRPC (a replica's own "
                    "gRPC server; ~15 % more requests per core on the reference app, README 'Performance') or Ray "
                    "actor calls (Serve's default; for networks that only pass declared ports, e.g. a service mesh: "
                    "the replicas' gRPC servers listen on ephemeral ports)")

    @model_validator(mode="after")
    def _admission_within_serve_queue(self) -> IngressSettings:
        if self.admission.max_concurrent + self.admission.max_queued > self.max_ongoing_requests:
            # Otherwise Serve's own queue, which knows no deadlines, fills before admission sheds.
            raise ValueError("admission.max_concurrent + admission.max_queued must not exceed max_ongoing_requests")
        return self


class GraphSpec(_Strict):
    """A whole graph file."""

    name: str
    description: str = ""
    version: str = "1"
    input: list[str] = ["Text"]
    output: list[str] = Field([], description="parts returned to clients (checked to exist); empty = all")
    timeout_s: float = Field(30.0, gt=0)
    limits: Limits = Limits()
    ingress: IngressSettings = IngressSettings()
    prepare: list[str] = Field(
        [], description="import paths of fn(data_dir: Path, progress: bool) run by `modelweave prepare` / `run`"
    )
    flow: Node

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"graph name {v!r} must match {NAME_PATTERN}")
        return v


# Kind modules name ``Node`` in their fields before the union exists: resolve it now.
_SPEC_MODELS: list[type[_Strict]] = [NodeBase, *(k.spec for k in KINDS.values()), GraphSpec]
for _model in _SPEC_MODELS:
    _model.model_rebuild(_types_namespace={"Node": Node, "ModelNode": ModelNode})


_KINDS = set(KINDS)


#: Fields whose value is a node (a discriminated union); pydantic puts the tag after them.
_NODE_FIELDS = {"flow", "fallback", *(f for k in KINDS.values() for f in k.node_fields)}


def _is_kind_tag(loc: tuple[Any, ...], i: int) -> bool:
    """True when ``loc[i]`` is a discriminator tag pydantic inserted, not a user's key."""
    if loc[i] not in _KINDS or i == 0:
        return False
    prev = loc[i - 1]
    # A node sits under a node field, a list index (steps, branches) or a route branch label.
    return prev in _NODE_FIELDS or isinstance(prev, int) or (i >= 2 and loc[i - 2] == "branches")


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        # Drop the discriminator tags pydantic inserts ("chain", "model" ...): users
        # think in field paths like flow.steps.0.deployment.
        raw = err["loc"]
        loc = ".".join(str(p) for i, p in enumerate(raw) if not _is_kind_tag(raw, i))
        lines.append(f"  {loc or '<root>'}: {err['msg']}")
    return f"invalid graph {source}:\n" + "\n".join(lines)


def parse_graph(data: Any, source: str = "<dict>") -> GraphSpec:
    """Validates a graph given as plain data (parsed YAML / JSON).

    Raises:
        GraphSpecError: with every problem, each prefixed by its field path.
    """
    if not isinstance(data, dict):
        raise GraphSpecError(f"invalid graph {source}: top level must be a mapping")
    _check_size(data, source)
    try:
        return GraphSpec.model_validate(data)
    except ValidationError as exc:
        raise GraphSpecError(_format_validation_error(exc, source)) from None
    except RecursionError:
        raise GraphSpecError(f"invalid graph {source}: nested too deeply") from None


#: Most values (mappings, lists, scalars) a graph may hold once YAML aliases are expanded: a
#: 600-byte file of aliases to aliases expands to millions, which validation would walk for minutes.
MAX_GRAPH_VALUES = 200_000


def _check_size(data: Any, source: str) -> None:
    seen, stack = 0, [data]
    while stack:
        value = stack.pop()
        seen += 1
        if seen > MAX_GRAPH_VALUES:
            raise GraphSpecError(f"invalid graph {source}: more than {MAX_GRAPH_VALUES:,} values "
                                 "(YAML aliases that expand exponentially?)")
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


class _GraphLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently:
    a route with branch ``a`` twice lost the first branch's model)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if not isinstance(key, str | int | float | bool):
                continue  # an unhashable key: the base class reports it
            if key in keys:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}",
                    key_node.start_mark)
            keys.add(key)
        return super().construct_mapping(node, deep=deep)


def load_graph(path: str | pathlib.Path) -> GraphSpec:
    """Reads and validates a YAML (or JSON) graph file.

    Raises:
        GraphSpecError: when the file is missing, not YAML, or not a valid graph.
    """
    p = pathlib.Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise GraphSpecError(f"cannot read graph file {p}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise GraphSpecError(f"graph file {p} is not UTF-8 text: {exc}") from None
    try:
        data = yaml.load(text, Loader=_GraphLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise GraphSpecError(f"graph file {p} is not valid YAML: {exc}") from None
    except RecursionError:
        raise GraphSpecError(f"graph file {p} is nested too deeply") from None
    return parse_graph(data, str(p))


def dump_graph(graph: GraphSpec) -> dict[str, Any]:
    """Returns the graph as plain data (what ``modelweave build`` embeds in a Serve config)."""
    slim = graph.model_dump(mode="json", exclude_defaults=True)
    # ``kind`` equals its default on every node, but it is the discriminator that
    # parse_graph needs to read the data back: put it back on every node.
    _restore_kinds(graph.model_dump(mode="json"), slim)
    return slim


def _restore_kinds(full: Any, slim: Any) -> None:
    if isinstance(full, dict) and isinstance(slim, dict):
        if full.get("kind") in _KINDS and "name" in full:
            slim["kind"] = full["kind"]
        for key, value in slim.items():
            if key in full:
                _restore_kinds(full[key], value)
    elif isinstance(full, list) and isinstance(slim, list) and len(full) == len(slim):
        for f, s in zip(full, slim, strict=True):
            _restore_kinds(f, s)
