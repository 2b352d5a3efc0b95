"""Graph specification: pydantic models for the YAML graph file and its Python builder.

Everything here is validated before any side effect (no Ray, no model loading).
Type-checking of edges lives in :mod:`modelweave.checker`.
"""

from __future__ import annotations

import pathlib
import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelweave.auth import AuthSettings
from modelweave.errors import GraphSpecError

NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
_NAME_RE = re.compile(NAME_PATTERN)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class AutoscalingSettings(_Strict):
    """Ray Serve autoscaling for one model deployment."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(2.0, gt=0)
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must be <= max_replicas")
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


class ActorOptions(_Strict):
    """Per-replica resources (Ray's ``ray_actor_options``)."""

    num_cpus: float = Field(0.1, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory: int | None = Field(None, ge=0, description="bytes")
    resources: dict[str, float] = {}


class BatchingSettings(_Strict):
    """Dynamic request batching inside a model replica (``serve.batch``)."""

    max_batch_size: int = Field(16, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=10)


class DeploymentSettings(_Strict):
    """Serve settings of one model node's deployment.

    Defaults follow RAY_NOTES: Serve's default ``max_ongoing_requests=5`` collapses a
    composed app under concurrency, so modelweave defaults to 64.
    """

    num_replicas: int | None = Field(None, ge=1)
    autoscaling_config: AutoscalingSettings | None = None
    ray_actor_options: ActorOptions = ActorOptions()
    max_ongoing_requests: int = Field(64, ge=1)
    max_queued_requests: int | None = Field(
        None, ge=-1, description="calls queued per caller; default max_ongoing_requests x max replicas; -1 = unbounded")
    batching: BatchingSettings | None = None
    max_replicas_per_node: int | None = Field(
        None, ge=1, description="Serve's cap on this deployment's replicas per node (1 spreads them over nodes)")
    graceful_shutdown_timeout_s: float = Field(5.0, ge=0)
    health_check_period_s: float = Field(10.0, gt=0)
    nice: int = Field(
        5, ge=0, le=19,
        description="CPU priority of the replica process (Unix nice): models yield the CPU to Serve's proxy "
                    "and the ingress, so an overloaded machine still answers (and sheds) requests fast")
    group: str | None = Field(
        None, pattern=NAME_PATTERN,
        description="co-location: model nodes naming the same group share one deployment (one replica process "
                    "holds all their adapters; calls inside the group are in-process); see modelweave.layout")
    inline: Literal["auto"] | bool = Field(
        "auto", description="run inside the ingress process instead of a deployment; auto: when the adapter is "
                            "non-blocking (rules, glue) and the node sets no other deployment setting")

    @model_validator(mode="after")
    def _replicas_xor_autoscaling(self) -> DeploymentSettings:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("set either num_replicas or autoscaling_config, not both")
        return self

    def queue_bound(self) -> int:
        """Serve's ``max_queued_requests`` for this deployment (see :func:`queue_bound`)."""
        return queue_bound(self)


class BatchOverrides(_Strict):
    """Batch-job (Ray Data) overrides of a model node's deployment settings."""

    batch_size: int | None = Field(None, ge=1)
    pool_size: int | None = Field(None, ge=1)
    num_cpus: float | None = Field(None, ge=0)
    num_gpus: float | None = Field(None, ge=0)


class NodeBase(_Strict):
    """Fields shared by every node kind."""

    name: str = Field(..., description="unique among siblings; model names are deployment names")
    description: str = ""
    timeout_s: float | None = Field(None, gt=0, description="per-node time limit")
    fallback: Node | None = Field(None, description="flow run instead when this node fails")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"{v!r} must match {NAME_PATTERN} (lowercase letters, digits, _ and -)")
        return v


class ModelNode(NodeBase):
    """Calls one model, served as its own deployment."""

    kind: Literal["model"] = "model"
    impl: str = Field(..., description="import path of a ModelAdapter subclass or a function")
    params: dict[str, Any] = {}
    deployment: DeploymentSettings = DeploymentSettings()
    batch: BatchOverrides = BatchOverrides()
    cost: float = Field(1.0, ge=0, description="modelled cost units per call")
    idempotent: bool | None = Field(
        None, description="retry a call whose replica died; default: what the adapter declares")


class ChainNode(NodeBase):
    """Runs steps in sequence; each step reads what the previous ones produced."""

    kind: Literal["chain"] = "chain"
    steps: list[Node] = Field(..., min_length=1)


class AggregateSpec(_Strict):
    """How a parallel node combines its branches."""

    strategy: Literal["vote", "mean", "first_valid", "concat", "custom"]
    function: str | None = Field(None, description="import path, for strategy=custom")
    produces: str | None = Field(None, description="part type written by a custom function")
    weights: list[float] | None = None
    min_successful: int | None = Field(None, ge=1, description="branches that must succeed; default all")
    separator: str = "\n"

    @model_validator(mode="after")
    def _custom_needs_function(self) -> AggregateSpec:
        if self.strategy == "custom" and not (self.function and self.produces):
            raise ValueError("strategy 'custom' needs 'function' and 'produces'")
        if self.strategy != "custom" and self.function:
            raise ValueError("'function' is only used with strategy 'custom'")
        return self


class ParallelNode(NodeBase):
    """Runs branches concurrently on copies of the message, then aggregates."""

    kind: Literal["parallel"] = "parallel"
    branches: list[Node] = Field(..., min_length=2)
    aggregate: AggregateSpec

    @model_validator(mode="after")
    def _weights_match(self) -> ParallelNode:
        w = self.aggregate.weights
        if w is not None and len(w) != len(self.branches):
            raise ValueError(f"aggregate.weights has {len(w)} entries for {len(self.branches)} branches")
        if self.aggregate.min_successful and self.aggregate.min_successful > len(self.branches):
            raise ValueError("aggregate.min_successful exceeds the number of branches")
        return self


Operator = Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "exists", "matches"]


class AdaptiveValue(_Strict):
    """A threshold read from shared feedback state, adjusted by later stages across requests."""

    state: str = Field(..., description="name of the feedback state variable")
    initial: float
    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveValue:
        if not (self.min <= self.initial <= self.max):
            raise ValueError("need min <= initial <= max")
        return self


class Condition(_Strict):
    """A test on one field of the message, e.g. ``classification.confidence lt 0.7``."""

    field: str = Field(..., description="dotted path into the envelope, e.g. text.language")
    op: Operator = "eq"
    value: Any = None
    value_from: AdaptiveValue | None = None

    @model_validator(mode="after")
    def _value_given(self) -> Condition:
        if self.op != "exists" and self.value is None and self.value_from is None:
            raise ValueError(f"operator {self.op!r} needs 'value' or 'value_from'")
        if self.value is not None and self.value_from is not None:
            raise ValueError("give 'value' or 'value_from', not both")
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"operator {self.op!r} needs a list value")
        return self


class RouteRule(_Strict):
    """Send to ``branch`` when all conditions (or any, with ``match: any``) hold."""

    branch: str
    when: list[Condition] = Field(..., min_length=1)
    match: Literal["all", "any"] = "all"


class ChangeFeedback(_Strict):
    """Cross-request feedback from what a route branch did.

    After a branch runs, ``field`` is compared with its value before the branch: when the
    branch changed it (e.g. the expensive model overturned the cheap model's label) the
    state moves by ``on_changed``, otherwise by ``on_unchanged``. With ``+0.01`` / ``-0.002``
    an escalation threshold settles where about one escalation in six changes the answer.
    """

    state: str
    field: str = "classification.label"
    on_changed: float = 0.0
    on_unchanged: float = 0.0
    branches: list[str] | None = Field(None, description="branches it applies to; default: all non-null")


class RouteNode(NodeBase):
    """Conditional branching on message fields or on a router model's label."""

    kind: Literal["route"] = "route"
    router: ModelNode | None = Field(None, description="model whose Classification label picks the branch")
    rules: list[RouteRule] = []
    branches: dict[str, Node | None] = Field(
        ..., min_length=1, description="branch name -> flow; null passes the message through unchanged"
    )
    default: str = Field(..., description="branch taken when no rule matches")
    feedback: list[ChangeFeedback] = []

    @model_validator(mode="after")
    def _branches_exist(self) -> RouteNode:
        for i, fb in enumerate(self.feedback):
            for name in fb.branches or []:
                if name not in self.branches:
                    raise ValueError(f"feedback[{i}].branches: {name!r} is not one of {sorted(self.branches)}")
        if self.default not in self.branches:
            raise ValueError(f"default branch {self.default!r} is not one of {sorted(self.branches)}")
        for i, rule in enumerate(self.rules):
            if rule.branch not in self.branches:
                raise ValueError(f"rules[{i}].branch {rule.branch!r} is not one of {sorted(self.branches)}")
        if self.router is None and not self.rules and len(self.branches) > 1:
            raise ValueError("a route needs 'rules' or a 'router' model")
        return self


class FeedbackUpdate(_Strict):
    """Cross-request feedback: nudge a shared state variable after a verdict."""

    state: str
    on_pass: float = 0.0
    on_fail: float = 0.0


class ValidateNode(NodeBase):
    """Runs ``target``, asks ``validator`` for a Verdict, and loops on failure."""

    kind: Literal["validate"] = "validate"
    target: Node
    validator: ModelNode
    on_failure: Literal["retry", "refine", "escalate"] = "retry"
    max_attempts: int = Field(2, ge=1, le=10)
    escalate: Node | None = Field(None, description="stronger flow used when attempts run out")
    on_exhausted: Literal["accept", "error"] = "accept"
    feedback: list[FeedbackUpdate] = []

    @model_validator(mode="after")
    def _escalation(self) -> ValidateNode:
        if self.on_failure == "escalate" and self.escalate is None:
            raise ValueError("on_failure 'escalate' needs an 'escalate' flow")
        return self


class CacheNode(NodeBase):
    """Caches ``body``'s output keyed by the exact parts it reads."""

    kind: Literal["cache"] = "cache"
    body: Node
    ttl_s: float = Field(300.0, gt=0)
    max_entries: int = Field(10_000, ge=1, le=10_000_000)
    key_fields: list[str] | None = Field(None, description="envelope fields in the key; default: parts read")


Node = Annotated[
    ModelNode | ChainNode | ParallelNode | RouteNode | ValidateNode | CacheNode,
    Field(discriminator="kind"),
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


class IngressSettings(_Strict):
    """Serve settings of the graph's ingress deployment."""

    num_replicas: int | None = Field(None, ge=1)
    autoscaling_config: AutoscalingSettings | None = None
    ray_actor_options: ActorOptions = ActorOptions()
    max_ongoing_requests: int = Field(256, ge=1)
    max_queued_requests: int | None = Field(
        None, ge=-1, description="requests queued per proxy; default max_ongoing_requests x max replicas")
    admission: AdmissionSettings = AdmissionSettings()
    backpressure_retry_after_s: float = Field(
        1.0, ge=0, le=3600,
        description="Retry-After of the 503 that Serve's proxy answers itself once the ingress's own queue "
                    "(max_ongoing_requests) and the proxy's (max_queued_requests) are full")
    auth: AuthSettings | None = Field(None, description="token authentication (HTTP and gRPC)")

    @model_validator(mode="after")
    def _replicas_xor_autoscaling(self) -> IngressSettings:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("set either num_replicas or autoscaling_config, not both")
        if self.admission.max_concurrent + self.admission.max_queued > self.max_ongoing_requests:
            # Otherwise Serve's own queue, which knows no deadlines, fills before admission sheds.
            raise ValueError("admission.max_concurrent + admission.max_queued must not exceed max_ongoing_requests")
        return self

    def queue_bound(self) -> int:
        """Serve's ``max_queued_requests`` for the ingress (see :func:`queue_bound`)."""
        return queue_bound(self)


def queue_bound(settings: DeploymentSettings | IngressSettings) -> int:
    """``max_queued_requests``: explicit, else one full round of every replica's slots.

    Bounded by default: an unbounded queue turns overload into congestion collapse
    (every request waits, none finishes in time) and grows memory without limit.
    """
    if settings.max_queued_requests is not None:
        return settings.max_queued_requests
    auto = settings.autoscaling_config
    replicas = auto.max_replicas if auto is not None else (settings.num_replicas or 1)
    return settings.max_ongoing_requests * replicas


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


for _model in (NodeBase, ModelNode, ChainNode, ParallelNode, RouteNode, ValidateNode, CacheNode, GraphSpec):
    _model.model_rebuild()


_KINDS = {"model", "chain", "parallel", "route", "validate", "cache"}


#: Fields whose value is a node (a discriminated union); pydantic puts the tag after them.
_NODE_FIELDS = {"flow", "fallback", "target", "body", "escalate"}


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
    try:
        return GraphSpec.model_validate(data)
    except ValidationError as exc:
        raise GraphSpecError(_format_validation_error(exc, source)) from None


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
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GraphSpecError(f"graph file {p} is not valid YAML: {exc}") from None
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
