"""``modelweave eval --sweep``: a route threshold swept offline, the quality/escalation frontier.

``--sweep ROUTE[@FIELD]=LO:HI:STEPS`` (or ``=V1,V2,...``) picks the numeric condition of the
route named ``ROUTE`` (``classification.confidence lt 0.56``; ``@FIELD`` chooses when a route
has several) and reports, for every threshold, accuracy, macro-F1, the share of requests
taken into that rule's branch (the "expensive" one) and model CPU / modelled cost per
request, as if the graph had been run with that fixed threshold (the graph's own threshold is
added to the grid, marked ``*``).

It does not run the graph once per threshold. Every graph is run twice more, whatever the
number of thresholds:

- **forced**: the swept condition always holds (its value is +-1e300), so every row whose
  other conditions allow it takes the rule's branch (the expensive tier runs once per row);
- **probed**: the condition never holds, and a probe route in front of the original one
  (rules ``field < t_k`` for the sorted thresholds, every branch a pass-through) records in
  the trace which thresholds the row's field value falls below. Which threshold would take
  the branch is then known for every row from the probe's chosen branch.

A row at threshold ``t`` takes the forced run's outcome when its condition holds at ``t`` and
the probed run's otherwise. This is exact, not an approximation, for deterministic models:
rules before the swept one, the other conditions of its rule (``match: any`` / ``all``) and
everything after the route are evaluated by the real executor in both runs. Adaptive
thresholds (``value_from``) are replaced by each fixed value, so the frontier is that of
fixed thresholds; the graph's own (adaptive) run is reported by plain ``eval`` next to it.
Caches around the route are left out of the two runs (a hit would hide the row's route).
A route with a ``router:`` model cannot be swept (its conditions read the router's output);
put the router model before the route, as ``examples/evolution/4-learned-router.yaml`` does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelweave.errors import GraphSpecError, InvalidArgument
from modelweave.evaluate import Inputs, RowOutcome, macro_f1
from modelweave.spec import GraphSpec, dump_graph, parse_graph

#: Stands in for "always" / "never" in a numeric condition (finite: specs travel as JSON).
_HUGE = 1e300
_ORDERING = ("lt", "le", "gt", "ge")
_MAX_STEPS = 200


@dataclass(frozen=True)
class SweepRequest:
    """A parsed ``--sweep`` option.

    Attributes:
        route: Route name (or a ``/``-separated suffix of its path).
        field: Field of the condition to sweep; ``None`` when the route has one numeric condition.
        values: Thresholds, in the order given.
    """

    route: str
    field: str | None
    values: tuple[float, ...]


@dataclass(frozen=True)
class SweepTarget:
    """Where the swept condition is in one graph."""

    path: str
    rule: int
    condition: int
    field: str
    op: str
    branch: str
    #: The graph's own threshold (the fixed value, or the adaptive one's initial value).
    current: float
    adaptive: bool


@dataclass
class SweepPoint:
    """Figures of one threshold over the evaluation rows."""

    threshold: float
    accuracy: float
    macro_f1: float
    escalated: float
    cpu_ms: float
    cost: float
    errors: int


@dataclass
class SweepResult:
    """The swept frontier of one graph."""

    name: str
    target: SweepTarget
    points: list[SweepPoint] = field(default_factory=list)


def parse_sweep(text: str) -> SweepRequest:
    """Parses ``ROUTE[@FIELD]=LO:HI:STEPS`` or ``ROUTE[@FIELD]=V1,V2,...``.

    Raises:
        InvalidArgument: naming ``--sweep`` and what is wrong.
    """
    where, sep, grid = text.partition("=")
    route, _, field_name = where.strip().partition("@")
    if not sep or not route or not grid.strip():
        raise InvalidArgument(f"--sweep {text!r}: expected ROUTE[@FIELD]=LO:HI:STEPS, e.g. escalate=0.3:0.9:13")
    try:
        if ":" in grid:
            lo_s, hi_s, steps_s = grid.split(":")
            lo, hi, steps = float(lo_s), float(hi_s), int(steps_s)
            if steps < 2 or steps > _MAX_STEPS or not lo < hi:
                raise ValueError
            values = tuple(round(lo + (hi - lo) * i / (steps - 1), 10) for i in range(steps))
        else:
            values = tuple(float(v) for v in grid.split(","))
    except ValueError:
        raise InvalidArgument(f"--sweep {text!r}: the grid must be LO:HI:STEPS with LO < HI and 2 <= STEPS <= "
                              f"{_MAX_STEPS}, or a comma-separated list of numbers") from None
    if not values or len(values) > _MAX_STEPS or not all(math.isfinite(v) for v in values):
        raise InvalidArgument(f"--sweep {text!r}: give 1 to {_MAX_STEPS} finite thresholds")
    return SweepRequest(route.strip(), field_name.strip() or None, tuple(dict.fromkeys(values)))


def _nodes(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every node dict under ``node`` (which has path ``path``) with its checker path."""
    yield path, node
    for key, value in node.items():
        if key == "kind":
            continue
        for child in _node_dicts(value):
            yield from _nodes(child, f"{path}/{child['name']}")


def _node_dicts(value: Any) -> Iterator[dict[str, Any]]:
    """Node dicts directly inside a slot value (a node, a list or a map of nodes)."""
    if isinstance(value, dict):
        if "kind" in value and "name" in value:
            yield value
        else:
            for item in value.values():
                yield from _node_dicts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _node_dicts(item)


def _root(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return f"{data['name']}/{data['flow']['name']}", data["flow"]


def request_for(text: str, specs: Sequence[GraphSpec]) -> SweepRequest:
    """Parses ``--sweep`` and checks that some graph has that route (before anything runs).

    Raises:
        InvalidArgument: a bad option or no graph with the route.
        GraphSpecError: a matching route that cannot be swept.
    """
    request = parse_sweep(text)
    if all(find_target(spec, request) is None for spec in specs):
        raise InvalidArgument(f"--sweep: no graph has a route named {request.route!r}")
    return request


def find_target(spec: GraphSpec, request: SweepRequest) -> SweepTarget | None:
    """The swept condition in ``spec``; ``None`` when no route matches ``request.route``.

    Raises:
        GraphSpecError: the route matches but has a router, no numeric condition, or several.
    """
    data = dump_graph(spec)
    matches = [(p, n) for p, n in _nodes(*reversed(_root(data))) if n["kind"] == "route"
               and (p == request.route or p.endswith("/" + request.route))]
    if not matches:
        return None
    if len(matches) > 1:
        raise GraphSpecError(f"--sweep {request.route}: {len(matches)} routes match in {spec.name!r} "
                             f"({', '.join(p for p, _ in matches)}); give more of the path")
    path, route = matches[0]
    if route.get("router"):
        raise GraphSpecError(f"--sweep: route {path} has a router model; its rules read the router's output, "
                             "which a sweep cannot probe (run the router as a model node before the route)")
    found = [(i, j, c) for i, rule in enumerate(route.get("rules", [])) for j, c in enumerate(rule["when"])
             if c.get("op") in _ORDERING and (request.field is None or c["field"] == request.field)]
    what = f"numeric condition on {request.field!r}" if request.field else "numeric (lt/le/gt/ge) condition"
    if not found:
        raise GraphSpecError(f"--sweep: route {path} has no {what}")
    if len(found) > 1:
        fields = ", ".join(sorted({c["field"] for _, _, c in found}))
        raise GraphSpecError(f"--sweep: route {path} has {len(found)} numeric conditions ({fields}); "
                             "choose one with ROUTE@FIELD=...")
    i, j, cond = found[0]
    adaptive = cond.get("value_from")
    current = float(adaptive["initial"] if adaptive else cond["value"])
    return SweepTarget(path=path, rule=i, condition=j, field=cond["field"], op=cond["op"],
                       branch=route["rules"][i]["branch"], current=current, adaptive=bool(adaptive))


def probe_order(target: SweepTarget, values: Sequence[float]) -> list[float]:
    """Thresholds in probe order: the condition at ``order[j]`` holds iff it holds at ``order[k]``, k <= j.

    Ascending for ``lt``/``le`` (a value below ``t`` is below every larger ``t``), descending
    for ``gt``/``ge``.
    """
    return sorted(values, reverse=target.op in ("gt", "ge"))


def variants(spec: GraphSpec, target: SweepTarget, values: Sequence[float]) -> tuple[GraphSpec, GraphSpec]:
    """The forced and probed variants of ``spec`` (see the module docstring).

    Raises:
        GraphSpecError: when a variant does not type-check (reported with the graph's name).
    """
    always = _HUGE if target.op in ("lt", "le") else -_HUGE
    out = []
    for forced in (True, False):
        data = dump_graph(spec)
        parent_slot, key, route = _slot_of(data, _drop_caches_around(data, target.path))
        cond = route["rules"][target.rule]["when"][target.condition]
        cond.pop("value_from", None)
        cond["value"] = always if forced else -always
        if not forced:
            order = probe_order(target, values)
            probe = {
                "kind": "route", "name": f"{route['name']}-probe", "default": "none",
                "rules": [{"branch": f"t{k:03d}", "when": [{"field": target.field, "op": target.op, "value": t}]}
                          for k, t in enumerate(order)],
                "branches": {**{f"t{k:03d}": None for k in range(len(order))}, "none": None},
            }
            parent_slot[key] = {"kind": "chain", "name": f"{route['name']}-sweep", "steps": [probe, route]}
        _drop_orphan_feedback(data)
        out.append(parse_graph(data, f"{spec.name} (sweep {'forced' if forced else 'probed'})"))
    return out[0], out[1]


def _slot_of(data: dict[str, Any], path: str) -> tuple[Any, Any, dict[str, Any]]:
    """(container, key, node) of the node at ``path`` in a graph dict."""
    root_path, root = _root(data)
    if path == root_path:
        return data, "flow", root
    for parent_path, parent in _nodes(root, root_path):
        for key, value in parent.items():
            slots = (value.items() if isinstance(value, dict) and "kind" not in value
                     else enumerate(value) if isinstance(value, list) else [])
            for k, child in slots:
                if isinstance(child, dict) and "kind" in child and f"{parent_path}/{child.get('name')}" == path:
                    return value, k, child
            if isinstance(value, dict) and value.get("kind") and f"{parent_path}/{value['name']}" == path:
                return parent, key, value
    raise GraphSpecError(f"--sweep: no node at {path}")


def _drop_caches_around(data: dict[str, Any], path: str) -> str:
    """Replaces every cache node above the node at ``path`` by its body; returns the node's new path."""
    node = _slot_of(data, path)[2]
    while True:
        above = [p for p, n in _nodes(*reversed(_root(data)))
                 if n["kind"] == "cache" and any(m is node for _, m in _nodes(n, p))]
        if not above:
            return next(p for p, n in _nodes(*reversed(_root(data))) if n is node)
        container, key, cache = _slot_of(data, above[0])
        container[key] = cache["body"]


def _drop_orphan_feedback(data: dict[str, Any]) -> None:
    """Feedback on a state no condition declares any more (it was the swept one) is dropped."""
    nodes = [n for _, n in _nodes(*reversed(_root(data)))]
    declared = {c["value_from"]["state"] for n in nodes for rule in n.get("rules", []) or []
                for c in rule.get("when", []) if isinstance(c, dict) and c.get("value_from")}
    for n in nodes:
        if n.get("feedback"):
            n["feedback"] = [u for u in n["feedback"] if u["state"] in declared]


def _route_choice(outcome: RowOutcome, path: str) -> str | None:
    if outcome.trace is None:
        return None
    for span in outcome.trace.spans:
        if span.kind == "route" and span.node == path:
            return span.route
    return None


def _row_figures(outcome: RowOutcome, costs: dict[str, float]) -> tuple[float, float]:
    cpu = cost = 0.0
    if outcome.trace is not None:
        for span in outcome.trace.spans:
            if span.kind == "model" and not span.error:
                cpu += span.cpu_ms
                cost += costs.get(span.node.rsplit("/", 1)[-1], 0.0)
    return cpu, cost


def combine(target: SweepTarget, values: Sequence[float], forced: Sequence[RowOutcome],
            probed: Sequence[RowOutcome], costs: dict[str, float], route_path: str) -> list[SweepPoint]:
    """Per-threshold figures from the two runs (rows aligned; see the module docstring).

    Args:
        target: The swept condition.
        values: Thresholds, reported in this order.
        forced: Outcomes of the forced variant.
        probed: Outcomes of the probed variant (same rows, same order).
        costs: Modelled cost per call by model node name.
        route_path: Path of the original route in the variants (caches above it removed).
    """
    if len(forced) != len(probed):
        raise ValueError(f"sweep: {len(forced)} forced rows but {len(probed)} probed rows")
    order = probe_order(target, values)
    parent, _, name = route_path.rpartition("/")
    probe_path, inner_path = f"{parent}/{name}-sweep/{name}-probe", f"{parent}/{name}-sweep/{name}"
    # first[i]: index into `order` of the smallest-k probe rule the row matched (len(order): none).
    first = []
    for o in probed:
        choice = _route_choice(o, probe_path)
        first.append(int(choice[1:]) if choice and re.fullmatch(r"t\d{3}", choice) else len(order))
    reached_f = [_route_choice(o, route_path) == target.branch for o in forced]
    reached_p = [_route_choice(o, inner_path) == target.branch for o in probed]
    figures_f = [_row_figures(o, costs) for o in forced]
    figures_p = [_row_figures(o, costs) for o in probed]
    points = []
    n = max(1, len(forced))
    for t in values:
        j = order.index(t)
        take = [first[i] <= j for i in range(len(forced))]
        chosen = [forced[i] if take[i] else probed[i] for i in range(len(forced))]
        truth, predicted = [o.truth for o in chosen], [o.predicted for o in chosen]
        cpu = sum((figures_f[i] if take[i] else figures_p[i])[0] for i in range(len(forced)))
        cost = sum((figures_f[i] if take[i] else figures_p[i])[1] for i in range(len(forced)))
        reached = sum(1 for i in range(len(forced)) if (reached_f[i] if take[i] else reached_p[i]))
        points.append(SweepPoint(
            threshold=t, accuracy=sum(1 for a, b in zip(truth, predicted, strict=True) if a == b) / n,
            macro_f1=macro_f1(truth, predicted), escalated=reached / n, cpu_ms=cpu / n, cost=cost / n,
            errors=sum(1 for o in chosen if o.error)))
    return points


#: Runs one checked variant over the rows: ``run(spec) -> outcomes`` (the eval runner).
Runner = Callable[[GraphSpec], list[RowOutcome]]


def sweep_graph(name: str, spec: GraphSpec, request: SweepRequest, run: Runner) -> SweepResult | None:
    """Sweeps ``request`` (plus the graph's own threshold) over one graph; ``None`` when it has no such route."""
    from modelweave.checker import check_graph

    target = find_target(spec, request)
    if target is None:
        return None
    values = request.values
    if not any(math.isclose(v, target.current) for v in values):  # the graph's own threshold is a point too
        values = tuple(sorted((*values, target.current)))
    forced, probed = variants(spec, target, values)
    costs = {m.name: m.cost for m in check_graph(forced).models.values()}
    route_path = _drop_caches_around(dump_graph(spec), target.path)
    points = combine(target, values, run(forced), run(probed), costs, route_path)
    return SweepResult(name=name, target=target, points=points)


def run_sweeps(versions: Sequence[tuple[str, GraphSpec]], request: SweepRequest, inputs: Inputs,
               truths: Sequence[str], *, runner: str = "batch", label_field: str = "classification.label",
               log: Callable[[str], None] = print) -> list[SweepResult]:
    """Sweeps every version that has the route, with the eval runner (``batch`` or ``local``)."""
    import time

    from modelweave.checker import check_graph
    from modelweave.evaluate import run_batch_rows, run_local

    def run(spec: GraphSpec) -> list[RowOutcome]:
        graph = check_graph(spec)
        if runner == "batch":
            return run_batch_rows(graph, inputs, truths, label_field=label_field)
        return run_local(graph, inputs, truths, label_field=label_field)

    results = []
    for name, spec in versions:
        started = time.perf_counter()
        result = sweep_graph(name, spec, request, run)
        if result is not None:
            results.append(result)
            log(f"  {name}: swept {len(request.values)} thresholds in {time.perf_counter() - started:.0f} s")
    return results
