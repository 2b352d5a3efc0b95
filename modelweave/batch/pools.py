"""Per-model-node Ray actor pools for batch jobs.

Each model node of a graph gets its own pool of :class:`ModelWorker` actors (unless
the job runs it inline, see :func:`cheap_models`). A worker wraps the plain adapter
(``build_adapter`` + ``load``), exactly as a Serve replica does online, and answers
whole micro-batches. Pool size and resources come from the
node's ``batch`` overrides, else from its ``deployment`` settings (replicas; with
autoscaling, ``max_replicas``; ``ray_actor_options``).

On small clusters the CPU requests inherited from the deployment settings are scaled
down so that the pools leave one whole CPU free: Ray Data's file listing, read and
write tasks need it, and without it the job hangs without a warning (RAY_NOTES).
Explicit ``batch.num_cpus`` values are never scaled; when they cannot fit, planning
fails with a message instead of a silent deadlock.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

from modelweave.adapters.base import build_adapter
from modelweave.checker import CheckedGraph
from modelweave.errors import ModelError, ModelweaveError, ResourceExhausted
from modelweave.executor import ModelReply
from modelweave.model_calls import predict_rows
from modelweave.spec import ModelNode
from modelweave.v1 import messages_pb2 as pb

logger = logging.getLogger("modelweave.batch")

#: CPUs left free for Ray Data's own tasks (file listing needs one whole CPU).
RESERVED_CPUS = 1.0


@dataclass(frozen=True)
class PoolPlan:
    """Size and resources of one model node's pool.

    Attributes:
        name: Model node name (also the deployment name online).
        size: Number of worker actors.
        num_cpus: Logical CPUs per actor.
        num_gpus: GPUs per actor.
        batch_size: Largest micro-batch sent to one actor call.
        explicit_cpus: True when ``batch.num_cpus`` set ``num_cpus`` (never scaled).
        memory: Bytes of memory reserved per actor, if any.
        resources: Custom Ray resources per actor.
    """

    name: str
    size: int
    num_cpus: float
    num_gpus: float
    batch_size: int
    explicit_cpus: bool = False
    memory: int | None = None
    resources: tuple[tuple[str, float], ...] = ()

    @property
    def total_cpus(self) -> float:
        """CPUs the whole pool holds."""
        return self.size * self.num_cpus


def plan_pool(node: ModelNode, default_batch_size: int) -> PoolPlan:
    """Derives a pool plan from a model node's ``batch`` overrides and ``deployment`` settings."""
    dep = node.deployment
    if node.batch.pool_size is not None:
        size = node.batch.pool_size
    elif dep.autoscaling_config is not None:
        size = dep.autoscaling_config.max_replicas
    else:
        size = dep.num_replicas or 1
    actor = dep.ray_actor_options
    explicit = node.batch.num_cpus is not None
    return PoolPlan(
        name=node.name,
        size=size,
        num_cpus=node.batch.num_cpus if node.batch.num_cpus is not None else actor.num_cpus,
        num_gpus=node.batch.num_gpus if node.batch.num_gpus is not None else actor.num_gpus,
        batch_size=node.batch.batch_size or default_batch_size,
        explicit_cpus=explicit,
        memory=actor.memory,
        resources=tuple(sorted(actor.resources.items())),
    )


def fit_plans(plans: Sequence[PoolPlan], *, available_cpus: float, available_gpus: float,
              stage_cpus: float, reserved_cpus: float = RESERVED_CPUS) -> list[PoolPlan]:
    """Scales inherited CPU requests so pools + graph stages leave ``reserved_cpus`` free.

    Args:
        plans: One plan per model node.
        available_cpus: CPUs currently free in the cluster.
        available_gpus: GPUs currently free in the cluster.
        stage_cpus: CPUs the graph stage actors will hold.
        reserved_cpus: CPUs kept free for Ray Data's read/write/listing tasks.

    Raises:
        ResourceExhausted: explicit requests (``batch.num_cpus``, GPUs) cannot fit.
    """
    gpus = sum(p.size * p.num_gpus for p in plans)
    if gpus > available_gpus + 1e-9:
        raise ResourceExhausted(f"model pools need {gpus:g} GPUs but the cluster has {available_gpus:g} free; "
                                "lower batch.num_gpus / batch.pool_size")
    budget = available_cpus - reserved_cpus - stage_cpus
    explicit = sum(p.total_cpus for p in plans if p.explicit_cpus)
    inherited = sum(p.total_cpus for p in plans if not p.explicit_cpus)
    if explicit and explicit > budget + 1e-9:
        raise ResourceExhausted(
            f"model pools request {explicit:g} CPUs via batch.num_cpus, but only {max(budget, 0):g} of "
            f"{available_cpus:g} free CPUs remain after the graph stages ({stage_cpus:g}) and the "
            f"{reserved_cpus:g} CPU Ray Data needs for reading and writing; lower batch.num_cpus or pool_size"
        )
    if inherited <= budget - explicit + 1e-9:
        return list(plans)
    factor = max(budget - explicit, 0.0) / inherited
    logger.warning("scaling inherited model CPU requests by %.2f to fit %.2f free CPUs", factor, available_cpus)
    # Round down (Ray counts in 1e-4 CPU units): rounding up by a hair leaves 0.9999 CPU
    # free and Ray Data's one-CPU listing task then never starts.
    return [p if p.explicit_cpus else replace(p, num_cpus=math.floor(p.num_cpus * factor * 1e4) / 1e4)
            for p in plans]


def cheap_models(graph: CheckedGraph) -> set[str]:
    """Model nodes cheap enough to run inline in a graph stage.

    Those whose adapter is not ``blocking`` (rule-based glue), that need no GPU, whose
    ``batch`` settings ask for no pool size or CPUs of their own and that are not marked
    ``deployment.inline: false`` (``true`` inlines a node whatever its adapter).
    """
    cheap = set()
    for name, node in graph.models.items():
        gpus = node.batch.num_gpus if node.batch.num_gpus is not None else node.deployment.ray_actor_options.num_gpus
        own = node.batch.pool_size is not None or node.batch.num_cpus is not None
        choice = getattr(node.deployment, "inline", "auto")  # the online layout's per-node choice
        if choice is True or (choice is not False and not gpus and not own and not _blocking(node)):
            cheap.add(name)
    return cheap


def blocking_models(graph: CheckedGraph, names: Collection[str]) -> set[str]:
    """Those of ``names`` whose adapter is ``blocking``: real work per call, run in a thread."""
    return {n for n in names if _blocking(graph.models[n])}


def _blocking(node: ModelNode) -> bool:
    return bool(build_adapter(node.impl, node.params).blocking)


class ModelWorker:
    """Actor body: one loaded adapter answering micro-batches of envelopes.

    Args:
        node: The model node as plain data (``ModelNode.model_dump()``).
    """

    def __init__(self, node: dict[str, Any]) -> None:
        self.node = ModelNode.model_validate(node)
        self.adapter = build_adapter(self.node.impl, self.node.params)
        self.adapter.load()
        self.calls = 0
        self.rows = 0
        self.max_batch = 0

    def ready(self) -> bool:
        """Returns True once the adapter is loaded and healthy (raises otherwise)."""
        self.adapter.health()
        return True

    def predict(self, batch: list[pb.Message]) -> list[ModelReply | ModelweaveError]:
        """Answers a micro-batch with one reply (part + CPU ms) or typed error per envelope.

        A failing row fails only itself (:func:`modelweave.model_calls.predict_rows`, the
        same rule as online dynamic batching).
        """
        self.calls += 1
        self.rows += len(batch)
        self.max_batch = max(self.max_batch, len(batch))
        return predict_rows(self.adapter, batch)

    def stats(self) -> dict[str, int]:
        """Calls, rows and largest batch seen by this worker."""
        return {"calls": self.calls, "rows": self.rows, "max_batch": self.max_batch}


class ModelPools:
    """The worker pools of every model node of one graph.

    Pools are plain (non-detached) actors owned by the creating process; they live
    until :meth:`shutdown` or until the driver exits. They hold no per-job state, so one
    set of pools can serve several jobs of the same graph.

    Args:
        graph: The checked graph whose model nodes get pools.
        plans: Pool plan per pooled model node name (see :func:`plan_pool` /
            :func:`fit_plans`); model nodes without a plan get no pool (they run inline).
    """

    def __init__(self, graph: CheckedGraph, plans: dict[str, PoolPlan]) -> None:
        import ray

        self.graph = graph
        self.plans = plans
        self.job_id = uuid.uuid4().hex[:8]
        remote = ray.remote(ModelWorker)
        self.actors: dict[str, list[Any]] = {}
        for name, node in graph.models.items():
            if name not in plans:
                continue
            plan = plans[name]
            options: dict[str, Any] = {
                "num_cpus": plan.num_cpus,
                "num_gpus": plan.num_gpus,
                "max_restarts": 2,
                "name": f"modelweave-batch:{graph.spec.name}:{self.job_id}:{name}",
            }
            if plan.memory:
                options["memory"] = plan.memory
            if plan.resources:
                options["resources"] = dict(plan.resources)
            self.actors[name] = [
                remote.options(**{**options, "name": f"{options['name']}:{i}"}).remote(  # type: ignore[attr-defined]
                    node.model_dump(mode="json"))
                for i in range(plan.size)
            ]

    @property
    def cpus(self) -> float:
        """CPUs held by all pools."""
        return sum(p.total_cpus for p in self.plans.values())

    @property
    def gpus(self) -> float:
        """GPUs held by all pools."""
        return sum(p.size * p.num_gpus for p in self.plans.values())

    def wait_ready(self, timeout_s: float = 300.0) -> float:
        """Blocks until every worker has loaded its adapter; returns the seconds waited.

        Raises:
            ModelError: a model failed to load (named), or did not load in time.
        """
        import ray

        start = time.monotonic()
        for name, actors in self.actors.items():
            left = max(timeout_s - (time.monotonic() - start), 1.0)
            try:
                ray.get([a.ready.remote() for a in actors], timeout=left)
            except ray.exceptions.GetTimeoutError:
                raise ModelError(f"model {name!r} did not load within {timeout_s:g} s (not enough free "
                                 "resources for its pool?)") from None
            except ray.exceptions.RayError as exc:
                cause = getattr(exc, "cause", None) or exc
                raise ModelError(f"model {name!r} failed to load: {cause}") from None
        return time.monotonic() - start

    def handles(self) -> dict[str, list[Any]]:
        """Actor handles per model node name (what graph stages receive)."""
        return {name: list(actors) for name, actors in self.actors.items()}

    def batch_sizes(self) -> dict[str, int]:
        """Micro-batch size per model node name."""
        return {name: plan.batch_size for name, plan in self.plans.items()}

    def covers(self, graph: CheckedGraph, pooled: set[str]) -> bool:
        """True when these pools run exactly the ``pooled`` model nodes of ``graph``, unchanged."""
        mine, theirs = self.graph.models, graph.models
        return pooled == set(self.plans) and all(
            name in mine and (theirs[name].impl, theirs[name].params) == (mine[name].impl, mine[name].params)
            for name in pooled
        )

    def stats(self) -> dict[str, dict[str, int]]:
        """Per model: calls, rows and the largest micro-batch, summed over its workers."""
        import ray

        out: dict[str, dict[str, int]] = {}
        for name, actors in self.actors.items():
            per = ray.get([a.stats.remote() for a in actors])
            out[name] = {"calls": sum(s["calls"] for s in per), "rows": sum(s["rows"] for s in per),
                         "max_batch": max(s["max_batch"] for s in per)}
        return out

    def shutdown(self) -> None:
        """Kills every worker (idempotent)."""
        import ray

        for actors in self.actors.values():
            for actor in actors:
                try:
                    ray.kill(actor)
                except Exception:  # already gone
                    pass
        self.actors = {}
