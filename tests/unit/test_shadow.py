"""``shadow`` nodes: the primary answers unchanged; candidates are mirrored, compared, bounded and reported."""

from __future__ import annotations

import asyncio
import json
import pathlib
import time
from typing import Any

import pytest
from click.testing import CliRunner
from fakes import Sleep, build, graph, model, spans_of, text

from modelweave import shadow_report
from modelweave.checker import check_graph
from modelweave.cli import main
from modelweave.errors import GraphSpecError, ModelError
from modelweave.evolve import ablations
from modelweave.layout import hop_paths
from modelweave.observe import DictSink, TraceMetrics
from modelweave.shadow_outcome import ShadowOutcome
from modelweave.spec import parse_graph

pytestmark = pytest.mark.timeout(20)

LABEL, CONF = "classification.label", "classification.confidence"


def shadow(primary: dict[str, Any], *candidates: dict[str, Any], name: str = "s", **extra: Any) -> dict[str, Any]:
    return {"kind": "shadow", "name": name, "primary": primary, "candidates": list(candidates), **extra}


def primary_model() -> dict[str, Any]:
    return model("current", "Label", label="positive", confidence=0.9)


def background(data: dict[str, Any], **kw: Any) -> tuple[Any, list[ShadowOutcome]]:
    """An executor whose mirrors run in the background (as in the ingress), collecting outcomes."""
    outcomes: list[ShadowOutcome] = []
    ex, _ = build(data, on_shadow=outcomes.append, shadow_inline=False, **kw)
    return ex, outcomes


async def test_primary_answer_unchanged_and_agreement_recorded() -> None:
    plain, _ = build(graph(primary_model()))
    ex, outcomes = background(graph(shadow(primary_model(), model("next", "Label", label="negative",
                                                                   confidence=0.6))))
    want = (await plain.run(text())).message
    result = await ex.run(text())
    assert result.message == want
    spans = spans_of(result.trace)
    assert [s.kind for s in spans] == ["model", "shadow"]  # no candidate hop in the request's trace
    assert spans[1].node == "g/s" and spans[1].route == "mirrored"
    assert await ex.mirrors.drain(5)
    (out,) = outcomes
    assert (out.node, out.candidate, out.result) == ("g/s", "next", "compared")
    label, conf = out.fields
    assert (label.primary, label.candidate, label.equal) == ("positive", "negative", False)
    assert conf.delta == pytest.approx(-0.3) and not conf.equal
    assert out.primary_ms is not None and out.candidate_ms is not None
    assert ex.mirrors.pending() == 0  # nothing held after the run


async def test_metrics_from_outcomes() -> None:
    sink = DictSink()
    ex, _ = build(graph(shadow(primary_model(), model("same", "Label", label="positive", confidence=0.8),
                               model("broken", "Fail"))), shadow_inline=False)
    metrics = TraceMetrics(ex.graph, sink)
    ex.mirrors.on_shadow = metrics.record_shadow
    for _ in range(3):
        await ex.run(text())
    await ex.mirrors.drain(5)
    tags = {"graph": "g", "node": "g/s"}
    assert sink.counter("shadow_comparisons_total", **tags, candidate="same", field=LABEL, result="equal") == 3
    assert sink.counter("shadow_comparisons_total", **tags, candidate="same", field=CONF, result="differ") == 3
    assert sink.counter("shadow_comparisons_total", **tags, candidate="broken", field=LABEL, result="error") == 3
    delta_tags = tuple(sorted({**tags, "candidate": "same", "field": CONF}.items()))
    deltas = sink.histograms[("shadow_score_delta", delta_tags)]
    assert deltas == pytest.approx([0.1, 0.1, 0.1])
    assert ex.mirrors.count("g/s", "error") == 3


async def test_candidate_failure_never_reaches_the_primary() -> None:
    ex, outcomes = background(graph(shadow(primary_model(), model("broken", "Fail", message="candidate bug"))))
    result = await ex.run(text())
    assert result.message.classification.label == "positive"
    assert not any(s.error for s in result.trace.spans)
    await ex.mirrors.drain(5)
    assert outcomes[0].result == "error" and "candidate bug" in outcomes[0].error


async def test_slow_candidate_never_delays_primary_or_its_deadline() -> None:
    slow = Sleep(seconds=5.0, label="late")
    ex, outcomes = background(graph(shadow(primary_model(), model("slow", "Sleep", seconds=5.0),
                                           candidate_timeout_s=0.3), timeout_s=0.2), adapters={"slow": slow})
    try:
        start = time.monotonic()
        result = await ex.run(text())  # the request's own deadline is 0.2 s; the candidate needs 5 s
        assert time.monotonic() - start < 0.15
        assert result.message.classification.label == "positive"
        assert ex.mirrors.pending() == 1
        await ex.mirrors.drain(5)
        assert outcomes[0].result == "error" and outcomes[0].error.startswith("DEADLINE_EXCEEDED")
        assert outcomes[0].candidate_ms == pytest.approx(300, abs=150)
    finally:
        slow.release.set()


async def test_max_pending_sheds_and_counts() -> None:
    slow = Sleep(seconds=5.0)
    ex, outcomes = background(graph(shadow(primary_model(), model("slow", "Sleep", seconds=5.0), max_pending=2)),
                              adapters={"slow": slow})
    try:
        results = [await ex.run(text()) for _ in range(5)]
        assert [spans_of(r.trace, "shadow")[0].route for r in results] == ["mirrored"] * 2 + ["shed"] * 3
        assert ex.mirrors.pending("g/s") == 2
        assert [o.result for o in outcomes] == ["shed"] * 3
        assert ex.mirrors.count("g/s", "shed") == 3
    finally:
        slow.release.set()
    await ex.mirrors.drain(5)
    assert [o.result for o in outcomes[3:]] == ["compared", "compared"]
    assert ex.mirrors.pending() == 0


async def test_sample_share() -> None:
    ex, _ = background(graph(shadow(primary_model(), model("next", "Label"), sample=0.3, max_pending=1000)))
    routes = [spans_of((await ex.run(text())).trace, "shadow")[0].route for _ in range(400)]
    await ex.mirrors.drain(5)
    assert 80 <= routes.count("mirrored") <= 160  # binomial(400, 0.3): mean 120, sd 9
    assert routes.count("mirrored") + routes.count("skipped") == 400
    none, _ = background(graph(shadow(primary_model(), model("next", "Label"), sample=0.0)))
    assert spans_of((await none.run(text())).trace, "shadow")[0].route == "skipped"
    assert none.mirrors.pending() == 0


async def test_inline_mirrors_finish_inside_the_run(tmp_path: pathlib.Path) -> None:
    outcomes: list[ShadowOutcome] = []
    sink = tmp_path / "logs" / "shadow.jsonl"
    ex, _ = build(graph(shadow(primary_model(), model("next", "Label", label="negative"), sink=str(sink))),
                  on_shadow=outcomes.append)  # the default: batch, eval and local runs
    for i in range(4):
        await ex.run(text(), request_id=f"r{i}")
    assert len(outcomes) == 4 and ex.mirrors.pending() == 0  # nothing left to lose when the process ends
    records = [json.loads(line) for line in sink.read_text().splitlines()]
    assert [r["request_id"] for r in records] == ["r0", "r1", "r2", "r3"]
    rec = records[0]
    assert rec["graph"] == "g" and rec["node"] == "g/s" and rec["candidate"] == "next"
    assert rec["fields"][LABEL] == {"primary": "positive", "candidate": "negative", "equal": False, "delta": None}
    assert rec["fields"][CONF]["equal"] is True and rec["fields"][CONF]["delta"] == 0
    assert rec["primary_ms"] >= 0 and rec["candidate_ms"] >= 0 and rec["error"] == "" and rec["time"] > 1e9


async def test_candidate_gets_a_copy_of_the_input_and_writes_nothing_back() -> None:
    primary = {"kind": "chain", "name": "cur", "steps": [model("tag", "Tag", suffix="!"), primary_model()]}
    candidate = {"kind": "chain", "name": "cand", "steps": [model("tag2", "Tag", suffix="?"),
                                                            model("cand-label", "LabelFromText")]}
    ex, caller = build(graph(shadow(primary, candidate, compare=["text.content", LABEL])), shadow_inline=False)
    result = await ex.run(text("hi"))
    await ex.mirrors.drain(5)
    assert result.message.text.content == "hi!"
    assert caller.adapters["tag2"].seen[0].text.content == "hi"  # the node's input, not the primary's output


async def test_primary_failure_is_the_request_failure_only() -> None:
    outcomes: list[ShadowOutcome] = []
    sink = DictSink()
    ex, _ = build(graph(shadow(model("cur", "Fail"), model("next", "Label"))), on_shadow=outcomes.append,
                  shadow_inline=False)
    metrics = TraceMetrics(ex.graph, sink)
    with pytest.raises(ModelError):
        await ex.run(text())
    await ex.mirrors.drain(5)
    assert outcomes[0].result == "primary_failed" and outcomes[0].primary_error == "INTERNAL"
    metrics.record_shadow(outcomes[0])
    assert not any(name == "shadow_comparisons_total" for name, _ in sink.counters)


async def test_cancelled_request_leaves_no_waiting_mirror() -> None:
    slow = Sleep(seconds=5.0)
    ex, outcomes = background(graph(shadow(model("cur", "Sleep", seconds=5.0), model("next", "Label"))),
                              adapters={"cur": slow})
    task = asyncio.create_task(ex.run(text()))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    slow.release.set()
    assert await ex.mirrors.drain(5)
    assert outcomes[0].result == "primary_failed"


def test_type_rules() -> None:
    checked = check_graph(parse_graph(graph(shadow(primary_model(), model("gen", "Gen"), compare=["text.content"]),
                                            output=["Classification"])))
    assert checked.output_types == frozenset({"Text", "Classification"})  # the candidate's Generation is not
    assert {"current", "gen"} <= set(checked.models)  # candidate models are real model nodes (deployed)
    with pytest.raises(GraphSpecError, match=r"g/s: compare\[0\] \(candidate 'gen'\).*classification"):
        check_graph(parse_graph(graph(shadow(primary_model(), model("gen", "Gen")))))
    with pytest.raises(GraphSpecError, match=r"compare\[0\] \(primary 'current'\)"):
        check_graph(parse_graph(graph(shadow(primary_model(), model("x", "Label"), compare=["generation.text"]))))
    with pytest.raises(GraphSpecError, match="has no field 'nope'"):
        check_graph(parse_graph(graph(shadow(primary_model(), model("x", "Label"), compare=["classification.nope"]))))
    with pytest.raises(GraphSpecError, match="candidates"):
        parse_graph(graph(shadow(primary_model())))
    with pytest.raises(GraphSpecError, match="sample"):
        parse_graph(graph(shadow(primary_model(), model("x", "Label"), sample=1.5)))
    with pytest.raises(GraphSpecError, match="both named"):
        check_graph(parse_graph(graph(shadow(primary_model(), primary_model()))))


def test_feedback_inside_a_candidate_is_refused() -> None:
    adaptive = {"field": "classification.confidence", "op": "lt",
                "value_from": {"state": "t", "initial": 0.5, "min": 0, "max": 1}}
    cascade = {"kind": "route", "name": "r", "default": "keep", "rules": [{"branch": "up", "when": [adaptive]}],
               "feedback": [{"state": "t", "on_changed": 0.01}],
               "branches": {"keep": None, "up": model("big", "Label")}}
    candidate = {"kind": "chain", "name": "cand", "steps": [model("small", "Label"), cascade]}
    with pytest.raises(GraphSpecError, match=r"g/s/cand/r: feedback inside a shadow candidate"):
        check_graph(parse_graph(graph(shadow(primary_model(), candidate))))


def test_hops_and_ablation_follow_the_primary() -> None:
    spec = parse_graph(graph(shadow(primary_model(), model("next", "Label"))))
    checked = check_graph(spec)
    assert [tuple(h.models for h in p.hops) for p in hop_paths(checked)] == [(("current",),)]
    variants = ablations(spec)
    removed = {v.removed: v for v in variants}
    assert removed["g/s"].spec.flow.kind == "model" and removed["g/s"].spec.flow.name == "current"
    assert not any(v.removed.startswith("g/s/next") for v in variants)


def _write_log(path: pathlib.Path) -> None:
    recs = []
    for i in range(10):
        recs.append({"graph": "g", "node": "g/s", "candidate": "next", "result": "compared",
                     "fields": {LABEL: {"primary": "a", "candidate": "a" if i < 8 else "b", "equal": i < 8,
                                        "delta": None},
                                CONF: {"primary": 0.9, "candidate": 0.8, "equal": False, "delta": -0.1}},
                     "primary_ms": 10.0 + i, "candidate_ms": 20.0 + i})
    recs.append({"graph": "g", "node": "g/s", "candidate": "next", "result": "error", "error": "x",
                 "fields": {}, "primary_ms": 10.0, "candidate_ms": 300.0})
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n{truncated\n")


def test_shadow_report(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "s.jsonl"
    _write_log(log)
    report = shadow_report.load(log)
    (s,) = report.candidates
    assert report.malformed == 1 and s.records == 11 and s.errors == 1
    assert s.error_rate == pytest.approx(1 / 11)
    assert s.fields[LABEL].agreement == pytest.approx(0.8)
    assert s.fields[CONF].mean_abs_delta == pytest.approx(0.1)
    assert shadow_report.percentile(s.primary_ms, 50) == pytest.approx(14.5)
    text_out = shadow_report.markdown(report)
    assert "| g/s | next | classification.label | 10 | 80.0% | - |" in text_out


def test_eval_shadow_log_command(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "s.jsonl"
    _write_log(log)
    result = CliRunner().invoke(main, ["eval", "--shadow-log", str(log)])
    assert result.exit_code == 0, result.output
    assert "80.0%" in result.output and "1 malformed line(s) skipped" in result.output
    missing = CliRunner().invoke(main, ["eval", "--shadow-log", str(tmp_path / "none.jsonl")])
    assert missing.exit_code == 2
    assert CliRunner().invoke(main, ["eval"]).exit_code == 2  # GRAPHS still needed without --shadow-log
