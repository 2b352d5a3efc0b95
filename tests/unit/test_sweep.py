"""``modelweave eval --sweep``: parsing, graph variants, and exactness against per-threshold runs."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
from click.testing import CliRunner

from modelweave import sweep as sw
from modelweave import sweep_report
from modelweave.checker import check_graph
from modelweave.cli import main
from modelweave.errors import GraphSpecError, InvalidArgument
from modelweave.evaluate import RowOutcome, run_local
from modelweave.spec import GraphSpec, parse_graph
from modelweave.v1 import messages_pb2 as pb

#: "<cheap confidence> <cheap label> <expensive label>", truth; see sweep_fakes.
ROWS = [
    ("0.95 pos pos", "pos"), ("0.91 neg pos", "pos"), ("0.85 neg neg", "neg"), ("0.72 pos neg", "neg"),
    ("0.66 pos pos", "pos"), ("0.61 neg pos", "pos"), ("0.55 neg neg", "neg"), ("0.50 pos neg", "neg"),
    ("0.45 neg pos", "pos"), ("0.40 pos pos", "pos"), ("0.35 neg pos", "neg"), ("0.30 urgent neg", "neg"),
    ("0.97 urgent pos", "pos"), ("0.60 neg pos", "pos"), ("0.60 neg pos", "pos"),  # a repeated row
]
GRID = (0.3, 0.45, 0.5, 0.6, 0.61, 0.7, 0.9, 1.0)


def cascade(value: float | None = 0.5, *, op: str = "lt", adaptive: bool = False, cache: bool = True,
            match: str = "any") -> dict[str, Any]:
    """A toy cascade: cheap model, route on its confidence (or an 'urgent' label), expensive model."""
    cond: dict[str, Any] = {"field": "classification.confidence", "op": op}
    if adaptive:
        cond["value_from"] = {"state": "thr", "initial": 0.5, "min": 0.1, "max": 0.9}
    else:
        cond["value"] = value
    urgent = {"field": "classification.label", "op": "eq" if match == "any" else "ne", "value": "urgent"}
    route: dict[str, Any] = {
        "kind": "route", "name": "escalate", "default": "keep",
        "rules": [{"branch": "expensive", "match": match, "when": [cond, urgent]}],
        "branches": {"keep": None,
                     "expensive": {"kind": "model", "name": "expensive", "impl": "sweep_fakes:Expensive",
                                   "cost": 10.0}},
    }
    if adaptive:
        route["feedback"] = [{"state": "thr", "on_changed": 0.05, "on_unchanged": -0.01}]
    body = {"kind": "chain", "name": "sentiment",
            "steps": [{"kind": "model", "name": "cheap", "impl": "sweep_fakes:Cheap", "cost": 1.0}, route]}
    flow = {"kind": "cache", "name": "memo", "body": body} if cache else body
    return {"name": "toy", "input": ["Text"], "output": ["Classification"],
            "flow": {"kind": "chain", "name": "main", "steps": [flow]}}


def _spec(data: dict[str, Any]) -> GraphSpec:
    return parse_graph(data)


def _run(spec: GraphSpec) -> list[RowOutcome]:
    return run_local(check_graph(spec), [t for t, _ in ROWS], [y for _, y in ROWS], concurrency=1)


def test_parse_grid_list_and_errors() -> None:
    req = sw.parse_sweep("escalate=0.3:0.9:7")
    assert req.route == "escalate" and req.field is None
    assert req.values == pytest.approx((0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9))
    req = sw.parse_sweep("main/escalate@classification.confidence=0.5,0.7,0.5")
    assert req.route == "main/escalate" and req.field == "classification.confidence" and req.values == (0.5, 0.7)
    for bad in ("escalate", "=0.1:0.2:3", "escalate=0.9:0.3:5", "escalate=0.1:0.2:1", "escalate=a,b",
                "escalate=0.1:0.2", "escalate=0.1:0.2:999", "escalate=inf"):
        with pytest.raises(InvalidArgument, match="--sweep"):
            sw.parse_sweep(bad)


def test_find_target_reads_the_condition() -> None:
    target = sw.find_target(_spec(cascade(adaptive=True)), sw.parse_sweep("escalate=0.1:0.9:3"))
    assert target is not None
    assert (target.path, target.field, target.op, target.branch) == (
        "toy/main/memo/sentiment/escalate", "classification.confidence", "lt", "expensive")
    assert target.current == 0.5 and target.adaptive
    assert sw.find_target(_spec(cascade()), sw.parse_sweep("nope=0.1:0.9:3")) is None


def test_find_target_refuses_what_it_cannot_sweep() -> None:
    data = cascade()
    data["flow"]["steps"][0]["body"]["steps"][1]["rules"][0]["when"][1] = {
        "field": "text.language_score", "op": "gt", "value": 0.5}
    with pytest.raises(GraphSpecError, match="ROUTE@FIELD"):
        sw.find_target(_spec(data), sw.parse_sweep("escalate=0.1:0.9:3"))
    assert sw.find_target(_spec(data), sw.parse_sweep("escalate@text.language_score=0.1:0.9:3")) is not None
    with pytest.raises(GraphSpecError, match="no numeric condition on 'text.language'"):
        sw.find_target(_spec(data), sw.parse_sweep("escalate@text.language=0.1:0.9:3"))
    routed = cascade(cache=False)
    routed["flow"]["steps"][0]["steps"][1]["router"] = {"kind": "model", "name": "r", "impl": "sweep_fakes:Cheap"}
    with pytest.raises(GraphSpecError, match="router model"):
        sw.find_target(_spec(routed), sw.parse_sweep("escalate=0.1:0.9:3"))
    with pytest.raises(InvalidArgument, match="no graph has a route named 'other'"):
        sw.request_for("other=0.1:0.9:3", [_spec(cascade())])


def test_variants_type_check_without_the_cache_and_adaptive_state() -> None:
    spec = _spec(cascade(adaptive=True))
    target = sw.find_target(spec, sw.parse_sweep("escalate=0.3:0.9:4"))
    assert target is not None
    forced, probed = sw.variants(spec, target, GRID)
    f, p = check_graph(forced), check_graph(probed)
    assert "toy/main/sentiment/escalate" in f.nodes and not f.states  # cache and adaptive state gone
    probe = p.nodes["toy/main/sentiment/escalate-sweep/escalate-probe"].node
    assert [rule.when[0].value for rule in probe.rules] == sorted(GRID)  # type: ignore[union-attr]
    assert "toy/main/sentiment/escalate-sweep/escalate/expensive" in p.nodes


@pytest.mark.parametrize(("op", "match"), [("lt", "any"), ("le", "all"), ("gt", "any"), ("ge", "any")])
def test_sweep_equals_one_run_per_threshold(op: str, match: str) -> None:
    """Two runs give, for every threshold, what running the graph with that fixed threshold gives."""
    result = sw.sweep_graph("toy", _spec(cascade(op=op, match=match)), sw.SweepRequest("escalate", None, GRID), _run)
    assert result is not None and [p.threshold for p in result.points] == list(GRID)
    for point in result.points:
        outcomes = _run(_spec(cascade(point.threshold, op=op, match=match)))
        n = len(outcomes)
        escalated = sum(1 for o in outcomes if o.trace is not None and any(
            s.kind == "route" and s.route == "expensive" for s in o.trace.spans))
        cost = sum(1.0 + 10.0 * any(s.node.endswith("/expensive") for s in o.trace.spans)
                   for o in outcomes if o.trace is not None)
        cached = sum(1 for o in outcomes if o.trace is not None and not any(s.kind == "route" for s in o.trace.spans))
        assert point.accuracy == pytest.approx(sum(o.truth == o.predicted for o in outcomes) / n), point
        # The plain run's cache answers the repeated row without routing it; the sweep runs uncached.
        assert escalated <= point.escalated * n <= escalated + cached
        assert cost <= point.cost * n <= cost + 11.0 * cached
        assert point.errors == 0


def test_sweep_marks_the_graphs_own_threshold_and_reports(tmp_path: pathlib.Path) -> None:
    result = sw.sweep_graph("toy", _spec(cascade(0.6)), sw.SweepRequest("escalate", None, GRID), _run)
    assert result is not None
    table = sweep_report.markdown([result])
    assert "| 0.6 * |" in table and "expensive" in table
    own = sw.sweep_graph("toy", _spec(cascade(0.58)), sw.SweepRequest("escalate", None, GRID), _run)
    assert own is not None and [p.threshold for p in own.points] == sorted((*GRID, 0.58))
    sweep_report.plot([result], [], tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").stat().st_size > 1000
    sweep_report.write_json([result], tmp_path / "eval.json")
    saved = json.loads((tmp_path / "eval.sweep.json").read_text())
    assert saved[0]["target"]["field"] == "classification.confidence" and len(saved[0]["points"]) == len(GRID)


def test_combine_takes_forced_rows_below_the_threshold() -> None:
    """Hand-made traces: row 0 falls below 0.5 and 0.7, row 1 below 0.7 only, row 2 below none."""
    target = sw.SweepTarget(path="g/r", rule=0, condition=0, field="classification.confidence", op="lt",
                            branch="hi", current=0.5, adaptive=False)

    def outcome(predicted: str, route: str, probe: str | None = None, cpu: float = 1.0) -> RowOutcome:
        spans = [pb.Span(node="g/m", kind="model", cpu_ms=cpu)]
        if probe is not None:
            spans.append(pb.Span(node="g/r-sweep/r-probe", kind="route", route=probe))
        spans.append(pb.Span(node="g/r-sweep/r" if probe is not None else "g/r", kind="route", route=route))
        return RowOutcome("a", predicted, pb.Trace(spans=spans))

    forced = [outcome("a", "hi", cpu=5.0), outcome("a", "hi", cpu=5.0), outcome("b", "hi", cpu=5.0)]
    # Probe rules run in ascending threshold order: t000 is 0.3, t001 0.5, t002 0.7.
    probed = [outcome("b", "lo", "t001"), outcome("b", "lo", "t002"), outcome("a", "lo", "none")]
    points = sw.combine(target, (0.7, 0.5, 0.3), forced, probed, {"m": 2.0}, "g/r")
    by_t = {p.threshold: p for p in points}
    assert by_t[0.3].escalated == 0 and by_t[0.3].accuracy == pytest.approx(1 / 3)
    assert by_t[0.5].escalated == pytest.approx(1 / 3) and by_t[0.5].accuracy == pytest.approx(2 / 3)
    assert by_t[0.7].escalated == pytest.approx(2 / 3) and by_t[0.7].accuracy == 1.0
    assert by_t[0.7].cpu_ms == pytest.approx((5 + 5 + 1) / 3) and by_t[0.7].cost == pytest.approx(2.0)
    with pytest.raises(ValueError, match="rows"):
        sw.combine(target, (0.5,), forced, probed[:2], {}, "g/r")


def test_eval_cli_sweeps_and_plots(tmp_path: pathlib.Path) -> None:
    graph = tmp_path / "toy.yaml"
    graph.write_text(json.dumps(cascade(adaptive=True)))
    data = tmp_path / "rows.csv"
    data.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in ROWS))
    out = CliRunner().invoke(main, [
        "eval", str(graph), "--data", str(data), "--runner", "local", "--sweep", "escalate=0.3:0.9:7",
        "--plot", str(tmp_path / "f.png"), "--json", str(tmp_path / "r.json")])
    assert out.exit_code == 0, out.output
    assert "Sweep of `classification.confidence lt T`" in out.output and "| 0.5 * |" in out.output
    assert (tmp_path / "f.png").exists() and (tmp_path / "r.sweep.json").exists()
    bad = CliRunner().invoke(main, ["eval", str(graph), "--data", str(data), "--sweep", "missing=0.1:0.2:2"])
    assert bad.exit_code == 2 and "no graph has a route named 'missing'" in bad.output
