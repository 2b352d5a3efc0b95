"""Where each model node runs: its own deployment, a shared (co-located) one, or the ingress.

A Serve hop costs several milliseconds of CPU across proxy, ingress and replica, often
more than a cheap model itself. Two spec settings let a graph pay for fewer hops:

* ``deployment: {group: NAME}`` puts model nodes in one deployment: one replica process
  holds all the group's adapters. The executor sends a run of consecutive group members
  of a chain in one call (see :mod:`modelweave.group_calls`), and each node keeps its own
  span, metrics and ``cpuMs``.
* ``deployment: {inline: auto|true|false}`` runs a node inside the ingress process. ``auto``
  (the default) inlines non-blocking adapters (rules, handoffs, glue) unless the node gives
  any other deployment setting a non-default value: replicas, batching or resources say the
  author wants a deployment of its own.

The group's Serve settings are the non-default values its members give (the defaults
otherwise); two members giving one field different values is a :class:`GraphSpecError`
naming both nodes. "Non-default" rather than "written in the file" because specs travel
as data with defaults dropped or filled in (``dump_graph``, ``modelweave build``), and
every process must plan the same layout. This module is pure planning (no Ray): the checker attaches a :class:`Layout`
to every :class:`~modelweave.checker.CheckedGraph`, and the Serve builder, the ingress,
``check -v``, ``describe`` and ``draw`` read it.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from modelweave.checker import CheckedGraph
from modelweave.errors import GraphSpecError
from modelweave.nodes import kind_of
from modelweave.spec import ChainNode, DeploymentSettings, ModelNode, Node

#: Deployment settings that only say where a node runs (not how its deployment is configured).
_PLACEMENT_FIELDS = frozenset({"group", "inline"})


@dataclass(frozen=True)
class DeploymentPlan:
    """One model deployment of the graph.

    Attributes:
        name: Serve deployment name (the model's name, or the group's).
        members: Model node names it serves, in graph order.
        settings: Its Serve settings.
        group: True for a co-located group (served by ``GroupDeployment``).
    """

    name: str
    members: tuple[str, ...]
    settings: DeploymentSettings
    group: bool = False


@dataclass
class Layout:
    """Placement of every model node of one graph.

    Attributes:
        deployments: Model deployments by name.
        home: Deployment name per model node name; None means inside the ingress.
        runs: Runs of consecutive chain steps served by one group, by ``id`` of the run's
            first step: the executor sends each run as one call.
        child_process: Model nodes inside the ingress that run in a child process of it
            (``deployment.inline: process``).
    """

    deployments: dict[str, DeploymentPlan] = field(default_factory=dict)
    home: dict[str, str | None] = field(default_factory=dict)
    runs: dict[int, tuple[ModelNode, ...]] = field(default_factory=dict)
    child_process: set[str] = field(default_factory=set)

    @property
    def inline(self) -> list[str]:
        """Model node names that run inside the ingress."""
        return [name for name, home in self.home.items() if home is None]

    def placement(self, name: str) -> str:
        """A short description of where model ``name`` runs (for describe, draw and check)."""
        home = self.home[name]
        if home is None:
            return "in ingress, own process" if name in self.child_process else "in ingress"
        return f"group {home}" if self.deployments[home].group else "own deployment"


def plan_layout(graph: CheckedGraph) -> Layout:
    """Plans the deployments of a checked graph.

    Raises:
        GraphSpecError: conflicting settings inside a group, ``inline: true`` on a group
            member, batching in a group, or a group named like another model's deployment.
    """
    layout = Layout()
    groups: dict[str, list[tuple[str, ModelNode]]] = {}
    for name, node in graph.models.items():
        path = graph.model_paths[name]
        d = node.deployment
        if d.group is not None:
            if d.inline is True or d.inline == "process":
                raise GraphSpecError(f"{path}: deployment.inline: {str(d.inline).lower()} contradicts deployment.group "
                                     f"{d.group!r}; a node runs in the ingress or in its group, not both")
            groups.setdefault(d.group, []).append((path, node))
            layout.home[name] = d.group
        elif _inline(node, graph.info(node).blocking):
            layout.home[name] = None
            if d.inline == "process":
                layout.child_process.add(name)
        else:
            layout.home[name] = name
            layout.deployments[name] = DeploymentPlan(name, (name,), d)
    for group, members in groups.items():
        clash = layout.deployments.get(group)
        if clash is not None:
            raise GraphSpecError(f"group {group!r} would share its deployment name with model node "
                                 f"{graph.model_paths[group]}; rename the group")
        layout.deployments[group] = DeploymentPlan(group, tuple(n.name for _, n in members),
                                                   _group_settings(group, members), group=True)
    _find_runs(graph, layout)
    return layout


def _inline(node: ModelNode, blocking: bool) -> bool:
    inline = node.deployment.inline
    if inline == "auto":
        # Any Serve setting (replicas, resources, batching, queue bounds) asks for a deployment.
        return not blocking and not _given(node.deployment)
    return bool(inline)


def _group_settings(group: str, members: list[tuple[str, ModelNode]]) -> DeploymentSettings:
    """The union of the settings members give; one field given two values is refused."""
    chosen: dict[str, tuple[Any, str]] = {}
    for path, node in members:
        dumped = node.deployment.model_dump(mode="json")
        for key in sorted(_given(node.deployment)):
            seen = chosen.get(key)
            if seen is not None and seen[0] != dumped[key]:
                raise GraphSpecError(
                    f"group {group!r}: deployment.{key} is {seen[0]!r} at {seen[1]} but {dumped[key]!r} at {path}; "
                    "members of a group share one deployment: set it on one member, or the same on all")
            chosen.setdefault(key, (dumped[key], path))
    if "batching" in chosen:
        raise GraphSpecError(
            f"{chosen['batching'][1]}: deployment.batching is not supported in group {group!r}: dynamic batching "
            "is per deployment; give a batched model its own deployment")
    try:
        return DeploymentSettings.model_validate({"group": group, **{k: v for k, (v, _) in chosen.items()}})
    except ValidationError as exc:
        paths = ", ".join(p for p, _ in members)
        raise GraphSpecError(f"group {group!r} ({paths}): the merged deployment settings are invalid: "
                             f"{exc.errors()[0]['msg']}") from None


def _given(settings: DeploymentSettings) -> set[str]:
    """Deployment fields with a non-default value, placement fields aside."""
    return set(settings.model_dump(exclude_defaults=True)) - _PLACEMENT_FIELDS


def _find_runs(graph: CheckedGraph, layout: Layout) -> None:
    for info in graph.nodes.values():
        if not isinstance(info.node, ChainNode):
            continue
        run: list[ModelNode] = []
        for step in [*info.node.steps, None]:
            home = _groupable_home(step, layout)
            if run and (home is None or home != layout.home[run[0].name]):
                if len(run) > 1:
                    layout.runs[id(run[0])] = tuple(run)
                run = []
            if home is not None and isinstance(step, ModelNode):
                run.append(step)


def _groupable_home(step: Node | None, layout: Layout) -> str | None:
    """The group of a step that may join a run (fallbacks and timeouts need a call of their own)."""
    if not isinstance(step, ModelNode) or step.fallback is not None or step.timeout_s is not None:
        return None
    home = layout.home.get(step.name)
    return home if home is not None and layout.deployments[home].group else None


# -- hops per path (``modelweave check -v``) --------------------------------------------------


@dataclass(frozen=True)
class Hop:
    """One model call of a path: a Serve hop to ``deployment`` (None: in the ingress)."""

    deployment: str | None
    models: tuple[str, ...]


@dataclass(frozen=True)
class HopPath:
    """The model calls one request makes for a given set of route choices."""

    choices: tuple[str, ...]
    hops: tuple[Hop, ...]

    @property
    def serve_hops(self) -> int:
        """Calls that cross a process boundary (ingress -> model replica)."""
        return sum(1 for h in self.hops if h.deployment is not None)

    @property
    def in_process(self) -> int:
        """Model nodes run without a Serve hop of their own (inline, or later members of a group run)."""
        return sum(len(h.models) for h in self.hops) - self.serve_hops


#: One way through a node: (route choices made, hops taken).
Alt = tuple[tuple[str, ...], tuple[Hop, ...]]


def hop_paths(graph: CheckedGraph, limit: int = 64) -> list[HopPath]:
    """Every route-choice path through the graph with its hops (first attempts, cache misses).

    Fallbacks, validation retries and cache hits are left out: they are the exceptions,
    and listing them would multiply the paths. At most ``limit`` paths are returned.
    """
    return [HopPath(c, h) for c, h in _alts(graph.spec.flow, graph.layout, limit)[:limit]]


def _product(parts: list[list[Alt]], limit: int) -> list[Alt]:
    out: list[Alt] = []
    for combo in itertools.product(*parts):
        out.append((tuple(c for alt in combo for c in alt[0]), tuple(h for alt in combo for h in alt[1])))
        if len(out) >= limit:
            break
    return out


def _alts(node: Node, layout: Layout, limit: int) -> list[Alt]:
    return kind_of(node).hop_alternatives(node, layout, limit, lambda child: _alts(child, layout, limit), _product)


def verbose_lines(graph: CheckedGraph) -> list[str]:
    """``modelweave check -v``: every node with its types and placement, then the hops per path."""
    lines = []
    for info in graph.nodes.values():
        extra = ""
        if isinstance(info.node, ModelNode):
            extra = f" {info.node.impl} ({graph.layout.placement(info.node.name)})"
        lines.append(f"{info.path} [{info.node.kind}]{extra} -> {{{', '.join(sorted(info.available_out))}}}")
    lines.append("hops per path (first attempts, cache misses; in-process = model calls without a Serve hop):")
    for path in hop_paths(graph):
        hops = " -> ".join(f"{h.deployment or 'ingress'}[{'+'.join(h.models)}]" for h in path.hops)
        lines.append(f"  {', '.join(path.choices) or 'main'}: {path.serve_hops} Serve hops, "
                     f"{path.in_process} in-process: {hops}")
    return lines


def model_node_dicts(node: Any) -> Iterator[dict[str, Any]]:
    """Every model node of a graph given as plain data (parsed YAML), to edit its settings in place.

    Used to derive layout variants of a graph file (benchmarks, tests) without re-serialising it.
    """
    if isinstance(node, dict):
        if node.get("kind") == "model":
            yield node
        for value in node.values():
            yield from model_node_dicts(value)
    elif isinstance(node, list):
        for item in node:
            yield from model_node_dicts(item)


def every_model_in_the_ingress(data: dict[str, Any], replicas: int | None = None, *,
                               isolate: bool = False) -> dict[str, Any]:
    """A copy of graph ``data`` (plain data) with every model node inside the ingress.

    Each model node becomes ``deployment: {inline: true}``, keeping its ``batching`` (in-process
    dynamic batching); its other deployment settings (replicas, CPUs, autoscaling, group) go,
    since they are a deployment's, not the ingress's. With ``replicas`` the ingress runs that many
    replicas (autoscaling dropped), each a whole copy of the graph: no model hop, and no
    interpreter shared between them. On one CPU machine with ``modelweave run --direct-ingress``
    that was the fastest layout measured (README, "Performance"); it gives up what separate
    deployments are for: per-model scaling, GPUs and fault isolation.

    With ``isolate`` the blocking (CPU-heavy) nodes that ``data`` gives a deployment of their own become
    ``inline: process`` instead (:mod:`modelweave.process_isolation`): still no Serve hop, but
    each runs in a child process of the ingress replica, so it shares no interpreter with the
    ingress and its crash does not take the ingress down.
    """
    from modelweave.checker import check_graph  # the checker imports this module
    from modelweave.spec import parse_graph

    deployed: set[str] = set()
    if isolate:
        graph = check_graph(parse_graph(data, str(data.get("name", "graph"))))
        # Rule-based glue (non-blocking) costs microseconds: a process hop would cost more.
        deployed = {name for name, home in graph.layout.home.items()
                    if home is not None and graph.info(graph.models[name]).blocking}
    out: dict[str, Any] = copy.deepcopy(data)
    for node in model_node_dicts(out.get("flow")):
        settings = node.get("deployment")
        batching = settings.get("batching") if isinstance(settings, dict) else None
        kept = {"batching": batching} if batching is not None else {}
        if node.get("name") in deployed:  # its own process: it keeps its replica's CPU priority
            nice = settings.get("nice") if isinstance(settings, dict) else None
            node["deployment"] = {"inline": "process", **kept, **({"nice": nice} if nice is not None else {})}
        else:
            node["deployment"] = {"inline": True, **kept}
    if replicas is not None:
        set_ingress_replicas(out, replicas)
    return out


def set_ingress_replicas(data: dict[str, Any], replicas: int) -> None:
    """Makes graph ``data`` (plain data, changed in place) run ``replicas`` ingress replicas.

    A fixed count replaces the ingress's autoscaling, which would otherwise decide the count.
    """
    ingress = data.setdefault("ingress", {})
    ingress.pop("autoscaling_config", None)
    ingress["num_replicas"] = max(1, replicas)
