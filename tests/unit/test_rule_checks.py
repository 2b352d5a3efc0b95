"""Graph rules that must be refused before any request, and rule inputs that must not mislead a route."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from fakes import build, graph, model, text

from modelweave.checker import check_graph
from modelweave.errors import GraphSpecError, ModelError
from modelweave.spec import parse_graph

pytestmark = pytest.mark.timeout(30)


def escalation(field: str = "classification.label", **route: Any) -> dict[str, Any]:
    """A cheap model that says "neg", escalated always to one that says "pos", with change feedback."""
    threshold = {"state": "t", "initial": 0.5, "min": 0.1, "max": 0.9}
    return {"kind": "chain", "name": "main", "steps": [
        model("cheap", "Label", label="neg", confidence=0.2),
        {"kind": "route", "name": "r", "default": "keep",
         "rules": [{"branch": "esc", "when": [{"field": "classification.confidence", "op": "lt",
                                               "value_from": threshold}]}],
         "branches": {"keep": None, "esc": model("strong", "Label", label="pos", confidence=0.9)},
         "feedback": [{"state": "t", "field": field, "on_changed": 0.1, "on_unchanged": -0.05}], **route}]}


@pytest.mark.parametrize("field", ["classification.label", "classification", "classification.scores"])
async def test_change_feedback_sees_a_change_of_a_whole_part_too(field: str) -> None:
    flow = escalation(field)
    if field.endswith("scores"):  # scores differ only when the models give them
        flow["steps"][0]["params"]["scores"] = {"neg": 0.8, "pos": 0.2}
        flow["steps"][1]["branches"]["esc"]["params"]["scores"] = {"neg": 0.1, "pos": 0.9}
    ex, _ = build(graph(flow), state_refresh_s=0.0)
    result = await ex.run(text())
    (fb,) = [s for s in result.trace.spans if s.kind == "feedback"]
    # The branch overwrites the part in place: a saved reference would read "unchanged".
    assert f"({field} changed)" in fb.detail and "+0.1000" in fb.detail


def _refused(flow: dict[str, Any], match: str) -> None:
    with pytest.raises(GraphSpecError, match=match):
        check_graph(parse_graph(graph(flow)))


def _rule(field: str, op: str, value: Any) -> dict[str, Any]:
    return {"kind": "route", "name": "r", "default": "a", "branches": {"a": None, "b": model("m", "Label")},
            "rules": [{"branch": "b", "when": [{"field": field, "op": op, "value": value}]}]}


def test_ordering_a_text_value_is_refused_by_the_checker() -> None:
    _refused(_rule("metadata.score", "gt", 0.5), "operator 'gt' needs a numeric field; 'metadata.score' is a metadata")
    _refused(_rule("text", "lt", 0.5), "'text' is a whole message part")
    check_graph(parse_graph(graph(_rule("metadata.tier", "eq", "gold"))))  # equality on metadata stays fine


def test_an_invalid_regular_expression_is_refused_by_the_spec() -> None:
    _refused(_rule("text.content", "matches", "([bad"), "needs a valid regular expression")


@pytest.mark.parametrize("weights", [[-1, 1], [0, 0], [math.nan, 1], [math.inf, 1]])
def test_parallel_weights_must_be_finite_non_negative_and_not_all_zero(weights: list[float]) -> None:
    flow = {"kind": "parallel", "name": "p", "aggregate": {"strategy": "mean", "weights": weights},
            "branches": [model("a", "Label"), model("b", "Label")]}
    _refused(flow, "aggregate.weights must be finite|weights.*finite number")


def test_split_weights_must_add_up_to_a_finite_number() -> None:
    flow = {"kind": "split", "name": "s", "weights": {"a": 1e308, "b": 1e308},
            "branches": {"a": None, "b": model("m", "Label")}}
    _refused(flow, "must add up to a finite number")


def test_feedback_on_a_pass_through_branch_or_with_a_nan_delta_is_refused() -> None:
    flow = escalation()
    flow["steps"][1]["feedback"][0]["branches"] = ["keep"]
    _refused(flow, "'keep' is a pass-through")
    flow = escalation()
    flow["steps"][1]["feedback"][0]["on_changed"] = math.nan
    _refused(flow, "on_changed")


@pytest.mark.parametrize("confidence", [math.nan, math.inf])
async def test_a_model_answering_a_non_finite_confidence_fails_typed(confidence: float) -> None:
    flow = copy.deepcopy(escalation())
    flow["steps"][0]["params"]["confidence"] = confidence
    ex, _ = build(graph(flow))
    with pytest.raises(ModelError, match="non-finite classification.confidence") as err:
        await ex.run(text())
    assert err.value.node == "g/main/cheap"
