"""Spec pieces shared by every node kind: naming, deployment settings, the node base, conditions.

The node kinds' own spec models live in :mod:`modelweave.nodes` (one module per kind);
:mod:`modelweave.spec` assembles them into the graph file's schema and re-exports
everything, so users import from there.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from modelweave.spec import Node

NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
_NAME_RE = re.compile(NAME_PATTERN)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)  # .inf CPUs or weights: refused


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
    """Dynamic request batching of a model's calls (in its replica, or in the ingress when inline).

    Batches form opportunistically (see :mod:`modelweave.inprocess_batching`): an idle model
    starts a call at once; calls arriving while a batch runs go together in the next one.
    """

    max_batch_size: int = Field(16, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, le=10, description="how long a batch that is not full waits for more calls before it starts")


#: Longest pause of a Serve router between attempts to place a call on a full deployment.
#: Serve's default (0.5 s) with its two routing tasks per replica caps a caller at ~4 calls/s
#: into a replica that was full once: after a flood filled the ingress, the proxy fed it 4
#: requests/s for 6-11 s while it sat idle and every other request got a 503 (measured, 2 cores).
ROUTER_MAX_BACKOFF_S = 0.05
ROUTER_BACKOFF_HELP = ("longest backoff (s) of Serve's router between attempts to place a call on a full replica "
                       "(request_router_config.max_backoff_s; Serve's default 0.5 s throttles a recovered replica "
                       "to ~4 calls/s per replica)")


class ServeSettings(_Strict):
    """Serve settings every deployment has: the ingress's and each model deployment's.

    Subclasses redeclare ``max_ongoing_requests`` with their own default.
    """

    num_replicas: int | None = Field(None, ge=1)
    autoscaling_config: AutoscalingSettings | None = None
    ray_actor_options: ActorOptions = ActorOptions()
    max_ongoing_requests: int = Field(64, ge=1)
    max_queued_requests: int | None = Field(
        None, ge=-1, description="calls queued per caller; default max_ongoing_requests x max replicas; -1 = unbounded")
    router_max_backoff_s: float = Field(ROUTER_MAX_BACKOFF_S, gt=0, le=5, description=ROUTER_BACKOFF_HELP)
    health_check_period_s: float = Field(
        2.0, gt=0,
        description="seconds between Serve's probes of each replica; a replica that died is replaced only after a "
                    "probe fails, so this bounds how long it goes unnoticed (Serve's default, 10 s, made a killed "
                    "replica's successor answer 5-13 s after the kill here; README 'Reliability')")

    @model_validator(mode="after")
    def _replicas_xor_autoscaling(self) -> ServeSettings:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("set either num_replicas or autoscaling_config, not both")
        return self

    def queue_bound(self) -> int:
        """Serve's ``max_queued_requests`` for this deployment (see :func:`queue_bound`)."""
        return queue_bound(self)

    def most_replicas(self) -> int:
        """The most replicas this deployment runs at once (autoscaling's ``max_replicas``)."""
        auto = self.autoscaling_config
        return auto.max_replicas if auto is not None else (self.num_replicas or 1)


class DeploymentSettings(ServeSettings):
    """Serve settings of one model node's deployment.

    Defaults follow RAY_NOTES: Serve's default ``max_ongoing_requests=5`` collapses a
    composed app under concurrency, so modelweave defaults to 64.
    """

    batching: BatchingSettings | None = None
    max_replicas_per_node: int | None = Field(
        None, ge=1, description="Serve's cap on this deployment's replicas per node (1 spreads them over nodes)")
    graceful_shutdown_timeout_s: float = Field(5.0, ge=0)
    nice: int = Field(
        5, ge=0, le=19,
        description="CPU priority of the replica process (Unix nice): models yield the CPU to Serve's proxy "
                    "and the ingress, so an overloaded machine still answers (and sheds) requests fast")
    group: str | None = Field(
        None, pattern=NAME_PATTERN,
        description="co-location: model nodes naming the same group share one deployment (one replica process "
                    "holds all their adapters; calls inside the group are in-process); see modelweave.layout")
    inline: Literal["auto", "process"] | bool = Field(
        "auto", description="run inside the ingress process instead of a deployment; auto: when the adapter is "
                            "non-blocking (rules, glue) and the node sets no other deployment setting; process: "
                            "inside the ingress replica but in a child process of its own (its own interpreter: no "
                            "GIL shared with the ingress, and a crash restarts the child, not the ingress); see "
                            "modelweave.process_isolation")


class BatchOverrides(_Strict):
    """Batch-job (Ray Data) overrides of a model node's deployment settings."""

    batch_size: int | None = Field(None, ge=1)
    pool_size: int | None = Field(None, ge=1)
    num_cpus: float | None = Field(None, ge=0)
    num_gpus: float | None = Field(None, ge=0)


class NodeBase(_Strict):
    """Fields shared by every node kind (each kind adds ``kind: Literal[...]`` and its own fields)."""

    if TYPE_CHECKING:
        kind: str

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
        if self.op == "matches" and self.value is not None:
            try:
                re.compile(str(self.value))
            except re.error as exc:  # else every request that reaches the rule fails
                raise ValueError(f"operator 'matches' needs a valid regular expression: {exc}") from None
        return self


def queue_bound(settings: ServeSettings) -> int:
    """``max_queued_requests``: explicit, else one full round of every replica's slots.

    Bounded by default: an unbounded queue turns overload into congestion collapse
    (every request waits, none finishes in time) and grows memory without limit.
    """
    if settings.max_queued_requests is not None:
        return settings.max_queued_requests
    return settings.max_ongoing_requests * settings.most_replicas()
