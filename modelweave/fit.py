"""Fit check before deploy: do the graphs' resource asks fit the target cluster?

Serve never says why a replica stays pending: on a machine too small for the graphs it
only logs "taken more than 30s to be scheduled". ``modelweave build`` / ``run`` call
:func:`check_fit` first and say what does not fit and what to change. Pure functions, no
Ray: the CLI passes the target (``--num-cpus``, or the nodes of a live cluster).

What is counted: every deployment's replicas x ``ray_actor_options`` (CPUs, GPUs, custom
resources), the ingress included; with autoscaling, the replicas at start
(``initial_replicas``, else ``min_replicas``) must fit (error) and ``max_replicas`` should
(warning). Serve's controller and proxies, and the graph's state actor, ask no CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from modelweave.checker import check_graph
from modelweave.spec import DeploymentSettings, GraphSpec, ServeSettings

#: CPUs a ``--profile laptop`` build fits the graphs' autoscaling maxima into by default.
LAPTOP_CPUS = 2.0


@dataclass(frozen=True)
class Ask:
    """Resource ask of one deployment.

    Attributes:
        name: ``app/deployment``.
        num_cpus: Logical CPUs per replica.
        num_gpus: GPUs per replica.
        min_replicas: Replicas at deploy time.
        max_replicas: Replicas at the autoscaling maximum (``min_replicas`` without autoscaling).
        max_per_node: Serve's ``max_replicas_per_node``, if set.
        resources: Custom Ray resources per replica.
    """

    name: str
    num_cpus: float
    num_gpus: float = 0.0
    min_replicas: int = 1
    max_replicas: int = 1
    max_per_node: int | None = None
    resources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeCapacity:
    """Total logical resources of one node (``CPU``, ``GPU`` and custom ones)."""

    cpus: float
    gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class FitReport:
    """Outcome of :func:`check_fit`: errors block a deploy, warnings do not."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: str = ""

    @property
    def fits(self) -> bool:
        """True when the minimum needs fit."""
        return not self.errors


def _ask(name: str, settings: ServeSettings) -> Ask:
    auto = settings.autoscaling_config
    high = settings.most_replicas()
    if auto is not None:
        low = auto.initial_replicas if auto.initial_replicas is not None else auto.min_replicas
    else:
        low = high
    actor = settings.ray_actor_options
    per_node = settings.max_replicas_per_node if isinstance(settings, DeploymentSettings) else None
    return Ask(name=name, num_cpus=actor.num_cpus, num_gpus=actor.num_gpus, min_replicas=low, max_replicas=high,
               max_per_node=per_node, resources=dict(actor.resources))


def graph_asks(specs: Sequence[GraphSpec]) -> list[Ask]:
    """One :class:`Ask` per deployment of every graph (model nodes, then the ingress)."""
    asks = []
    for spec in specs:
        checked = check_graph(spec)
        asks += [_ask(f"{spec.name}/{name}", plan.settings) for name, plan in checked.layout.deployments.items()]
        asks.append(_ask(f"{spec.name}/Ingress", spec.ingress))
    return asks


def _total(asks: Sequence[Ask], what: str, at_max: bool) -> float:
    return sum((a.max_replicas if at_max else a.min_replicas) * getattr(a, what) for a in asks)


def _top(asks: Sequence[Ask], what: str, n: int = 4) -> str:
    ranked = sorted(asks, key=lambda a: -a.min_replicas * getattr(a, what))[:n]
    return ", ".join(f"{a.name} {a.min_replicas} x {getattr(a, what):g}" for a in ranked if getattr(a, what))


def _pack(asks: Sequence[Ask], nodes: Sequence[NodeCapacity]) -> list[str]:
    """First-fit-decreasing placement of the minimum replicas; returns the replicas left over."""
    cpus = [n.cpus for n in nodes]
    gpus = [n.gpus for n in nodes]
    res = [dict(n.resources) for n in nodes]
    count = [dict[str, int]() for _ in nodes]
    unplaced = []
    replicas = [a for a in asks for _ in range(a.min_replicas)]
    for a in sorted(replicas, key=lambda a: (-a.num_gpus, -a.num_cpus)):
        for i in range(len(nodes)):
            if (cpus[i] + 1e-9 >= a.num_cpus and gpus[i] + 1e-9 >= a.num_gpus
                    and all(res[i].get(k, 0.0) + 1e-9 >= v for k, v in a.resources.items())
                    and (a.max_per_node is None or count[i].get(a.name, 0) < a.max_per_node)):
                cpus[i] -= a.num_cpus
                gpus[i] -= a.num_gpus
                for k, v in a.resources.items():
                    res[i][k] -= v
                count[i][a.name] = count[i].get(a.name, 0) + 1
                break
        else:
            unplaced.append(a.name)
    return unplaced


def check_fit(asks: Sequence[Ask], nodes: Sequence[NodeCapacity], target: str = "the target") -> FitReport:
    """Compares deployments' asks with a cluster's nodes.

    Args:
        asks: From :func:`graph_asks`.
        nodes: The target's nodes (one entry for a single machine / ``--num-cpus``).
        target: How to name the target in messages (e.g. "--num-cpus 2").

    Returns:
        Errors for minimum needs that cannot fit (each says what to change), warnings for
        autoscaling maxima that would not fit, and a one-line summary.
    """
    report = FitReport()
    cpus = sum(n.cpus for n in nodes)
    gpus = sum(n.gpus for n in nodes)
    need_min, need_max = _total(asks, "num_cpus", False), _total(asks, "num_cpus", True)
    gpu_min, gpu_max = _total(asks, "num_gpus", False), _total(asks, "num_gpus", True)
    report.summary = (f"resources: the graphs ask {need_min:g} CPUs at start, {need_max:g} at autoscaling maxima"
                      + (f", {gpu_min:g}-{gpu_max:g} GPUs" if gpu_max else "")
                      + f"; {target} has {cpus:g} CPUs" + (f", {gpus:g} GPUs" if gpus else "")
                      + f" on {len(nodes)} node(s)")
    largest_cpus = max((n.cpus for n in nodes), default=0.0)
    largest_gpus = max((n.gpus for n in nodes), default=0.0)
    for a in asks:
        if a.num_cpus > largest_cpus + 1e-9:
            report.errors.append(f"{a.name} asks {a.num_cpus:g} CPUs per replica but the largest node of {target} "
                                 f"has {largest_cpus:g}: lower its ray_actor_options.num_cpus or use bigger nodes")
        if a.num_gpus > largest_gpus + 1e-9:
            report.errors.append(f"{a.name} asks {a.num_gpus:g} GPUs per replica but the largest node of {target} "
                                 f"has {largest_gpus:g}: add GPU nodes or set ray_actor_options.num_gpus to 0")
        for res, amount in a.resources.items():
            if not any(n.resources.get(res, 0.0) + 1e-9 >= amount for n in nodes):
                report.errors.append(f"{a.name} asks custom resource {res}={amount:g} that no node of {target} "
                                     f"offers: start a node with --resources '{{\"{res}\": {amount:g}}}'")
        if a.max_per_node and a.min_replicas > a.max_per_node * len(nodes):
            report.errors.append(
                f"{a.name} needs {a.min_replicas} replicas at most {a.max_per_node} per node, so "
                f"{math.ceil(a.min_replicas / a.max_per_node)} nodes; {target} has {len(nodes)}: add nodes, "
                f"lower its replicas or raise max_replicas_per_node")
    if need_min > cpus + 1e-9:
        report.errors.append(
            f"the graphs need {need_min:g} CPUs at start but {target} has {cpus:g}; replicas would wait forever. "
            f"Largest asks: {_top(asks, 'num_cpus')}. Change: `modelweave build --profile laptop` (scales CPU asks "
            f"to fit), lower ray_actor_options.num_cpus / replicas in the graph, or give Ray more logical CPUs "
            f"(`--num-cpus`, more than cores is fine when models mostly wait) or more nodes")
    if gpu_min > gpus + 1e-9:
        report.errors.append(f"the graphs need {gpu_min:g} GPUs at start but {target} has {gpus:g}: "
                             f"largest asks: {_top(asks, 'num_gpus')}")
    if not report.errors:
        unplaced = _pack(asks, nodes)
        if unplaced:
            report.warnings.append(
                f"totals fit but these replicas may not find a node with room ({target}'s nodes are too "
                f"fragmented): {', '.join(sorted(set(unplaced)))}")
    if need_max > cpus + 1e-9 and need_min <= cpus + 1e-9:
        report.warnings.append(
            f"at autoscaling maxima the graphs ask {need_max:g} CPUs but {target} has {cpus:g}: Serve will not "
            f"scale past what fits (new replicas stay pending) unless the cluster autoscaler adds nodes; "
            f"lower max_replicas or add capacity")
    if gpu_max > gpus + 1e-9 and gpu_min <= gpus + 1e-9:
        report.warnings.append(f"at autoscaling maxima the graphs ask {gpu_max:g} GPUs but {target} has {gpus:g}")
    return report


def laptop_factor(asks: Sequence[Ask], cpus: float = LAPTOP_CPUS) -> float:
    """The factor (<= 1) that makes the CPU asks at autoscaling maxima fit into ``cpus``."""
    need = _total(asks, "num_cpus", True)
    return 1.0 if need <= cpus else cpus / need


def scale_cpus(specs: Sequence[GraphSpec], factor: float) -> list[GraphSpec]:
    """Copies of ``specs`` with every replica's ``num_cpus`` multiplied by ``factor``.

    Values round down to 0.01 CPU (so the scaled total still fits) and stay at least 0.01
    where they were positive: a replica asking 0 CPUs could be packed without limit.
    """
    scaled = []
    for spec in specs:
        data = spec.model_dump(mode="json")
        # Nodes that run inside the ingress have no replicas; scaling their (unused) CPU ask
        # would make it a setting of their own and give them a deployment again.
        _scale_node_cpus(data, factor, frozenset(check_graph(spec).layout.inline))
        scaled.append(GraphSpec.model_validate(data))
    return scaled


def _scale_node_cpus(data: object, factor: float, inline: frozenset[str]) -> None:
    if isinstance(data, dict):
        skip = data.get("kind") == "model" and data.get("name") in inline
        options = data.get("ray_actor_options")
        if isinstance(options, dict) and options.get("num_cpus"):
            options["num_cpus"] = max(0.01, math.floor(float(options["num_cpus"]) * factor * 100) / 100)
        for key, value in data.items():
            if key != "ray_actor_options" and not (skip and key == "deployment"):
                _scale_node_cpus(value, factor, inline)
    elif isinstance(data, list):
        for item in data:
            _scale_node_cpus(item, factor, inline)


def nodes_from_ray(raw_nodes: Sequence[dict[str, object]]) -> list[NodeCapacity]:
    """Alive nodes of ``ray.nodes()`` as :class:`NodeCapacity` (custom resources kept)."""
    nodes = []
    for raw in raw_nodes:
        if not raw.get("Alive"):
            continue
        res = raw.get("Resources")
        resources = {str(k): float(v) for k, v in res.items()} if isinstance(res, dict) else {}
        custom = {k: v for k, v in resources.items() if k not in {"CPU", "GPU", "memory", "object_store_memory"}
                  and not k.startswith(("node:", "accelerator_type:"))}
        nodes.append(NodeCapacity(cpus=resources.get("CPU", 0.0), gpus=resources.get("GPU", 0.0), resources=custom))
    return nodes
