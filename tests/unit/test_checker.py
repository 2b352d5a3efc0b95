"""Static type-checking: errors name the node path and the mismatch; facts for the executor."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
from fakes import graph, impl, model

from modelweave.checker import CheckedGraph, check_graph
from modelweave.errors import GraphSpecError
from modelweave.spec import load_graph, parse_graph


def check(data: dict[str, Any]) -> CheckedGraph:
    return check_graph(parse_graph(data))


def check_error(data: dict[str, Any]) -> str:
    with pytest.raises(GraphSpecError) as info:
        check(data)
    return str(info.value)


def chain(*steps: dict[str, Any], name: str = "main") -> dict[str, Any]:
    return {"kind": "chain", "name": name, "steps": list(steps)}


def typed(name: str, consumes: list[str], produces: str) -> dict[str, Any]:
    return model(name, "Typed", consumes=consumes, produces=produces)


def route(rules: list[dict[str, Any]], branches: dict[str, Any], default: str = "a", name: str = "r",
          **extra: Any) -> dict[str, Any]:
    """A route node; a bare condition in ``rules`` becomes a one-condition rule to branch ``b``."""
    rules = [r if "branch" in r else {"branch": "b", "when": [r]} for r in rules]
    return {"kind": "route", "name": name, "rules": rules, "branches": branches, "default": default, **extra}


def when(field: str, op: str = "eq", value: Any = "x", **extra: Any) -> dict[str, Any]:
    cond: dict[str, Any] = {"field": field, "op": op, **extra}
    if "value_from" not in extra and op != "exists":
        cond["value"] = value
    return cond


# -- edge types ------------------------------------------------------------------------------


def test_chain_passes_types_along():
    checked = check(graph(chain(model("label", "Label"), typed("gen", ["Text", "Classification"], "Generation")),
                          output=["Text", "modelweave.v1.Classification", "Generation"]))
    assert checked.output_types == {"Text", "Classification", "Generation"}
    assert checked.info(checked.spec.flow.steps[1]).available_in == {"Text", "Classification"}


def test_type_mismatch_names_node_path_and_missing_type():
    msg = check_error(graph(chain(model("a", "Tag"), typed("needs-class", ["Text", "Classification"], "Verdict"))))
    assert msg.startswith("g/main/needs-class:")
    assert "missing {modelweave.v1.Classification}" in msg
    assert "only has {modelweave.v1.Text}" in msg
    assert impl("Typed") in msg


def test_nested_mismatch_path():
    flow = chain(route([when("text.language", value="fr")],
                       {"a": None, "b": chain(typed("deep", ["Embedding"], "Classification"), name="inner")}))
    msg = check_error(graph(flow))
    assert msg.startswith("g/main/r/inner/deep:")
    assert "missing {modelweave.v1.Embedding}" in msg


def test_graph_input_types_are_respected():
    checked = check(graph(typed("a", ["Embedding"], "Classification"), input=["Embedding"]))
    assert checked.models["a"].name == "a"
    with pytest.raises(GraphSpecError, match="missing {modelweave.v1.Embedding}"):
        check(graph(typed("a", ["Embedding"], "Classification")))


def test_graph_input_must_be_known_and_nonempty():
    assert "graph 'g' input: unknown message type 'Image'" in check_error(graph(model("a", "Label"), input=["Image"]))
    assert "'input' must name at least one" in check_error(graph(model("a", "Label"), input=[]))


def test_unknown_part_type_in_adapter_signature():
    msg = check_error(graph(chain(typed("weird", ["Text"], "Audio"))))
    assert msg.startswith("g/main/weird:")
    assert "unknown message type 'Audio'" in msg
    assert "known types: Text, Embedding" in msg


def test_declared_output_not_guaranteed():
    flow = route([when("text.language", value="fr")], {"a": None, "b": model("cls", "Label")})
    msg = check_error(graph(flow, output=["Classification"]))
    assert "graph 'g' declares output modelweave.v1.Classification" in msg
    assert "only guarantees {modelweave.v1.Text}" in msg


def test_declared_output_unknown_type():
    assert "graph 'g' output: unknown message type 'Audio'" in check_error(graph(model("a", "Label"),
                                                                               output=["Audio"]))


# -- names and imports ----------------------------------------------------------------------


def test_duplicate_model_names_across_the_graph():
    flow = chain(model("same", "Label"), chain(model("same", "Label"), name="inner"))
    msg = check_error(graph(flow))
    assert msg.startswith("g/main/inner/same:")
    assert "model name 'same' is already used at g/main/same" in msg


def test_sibling_name_clash():
    msg = check_error(graph(chain(model("a", "Label"), chain(model("b", "Label"), name="a"))))
    assert msg.startswith("g/main/a:")
    assert "two sibling nodes are both named 'a'" in msg


def test_same_name_in_different_parents_is_fine_for_non_models():
    flow = chain(chain(model("x", "Label"), name="step"), chain(chain(model("y", "Label"), name="step"), name="sub"))
    checked = check(graph(flow))
    assert "g/main/step" in checked.nodes and "g/main/sub/step" in checked.nodes


@pytest.mark.parametrize(
    ("impl_path", "needle"),
    [
        ("no_such_module_xyz:Thing", "cannot import module 'no_such_module_xyz'"),
        ("fakes:Missing", "module 'fakes' has no attribute 'Missing'"),
        ("justaname", "must look like 'package.module:Name'"),
        ("fakes:NotAnAdapter", "is neither a ModelAdapter subclass nor a function"),
        ("fakes:NOT_CALLABLE", "is neither a ModelAdapter subclass nor a function"),
    ],
)
def test_bad_import_path(impl_path, needle):
    msg = check_error(graph(chain({"kind": "model", "name": "m", "impl": impl_path})))
    assert msg.startswith("g/main/m:")
    assert needle in msg


def test_dotted_import_path_also_works():
    checked = check(graph({"kind": "model", "name": "m", "impl": "fakes.Label"}))
    assert checked.info(checked.spec.flow).produces == "Classification"


def test_bad_adapter_params():
    msg = check_error(graph(chain(model("m", "Label", confidence="very"))))
    assert msg.startswith("g/main/m:")
    assert "Label: params.confidence:" in msg
    msg = check_error(graph(chain(model("m", "Label", colour="red"))))
    assert "params.colour: Extra inputs are not permitted" in msg


def test_function_impl_uses_params_signature():
    node = {"kind": "model", "name": "up", "impl": impl("shout"), "params": {"consumes": ["Text"],
                                                                            "produces": "Text"}}
    checked = check(graph(node))
    info = checked.info(checked.spec.flow)
    assert info.consumes == ("Text",) and info.produces == "Text"
    bad = {**node, "params": {"produces": "Nope"}}
    assert "unknown message type 'Nope'" in check_error(graph(bad))


# -- route -------------------------------------------------------------------------------------


def test_route_condition_on_unavailable_part():
    msg = check_error(graph(chain(route([when("classification.label", value="x")], {"a": None, "b": None}))))
    assert msg.startswith("g/main/r: rules[0].when[0]:")
    assert "reads modelweave.v1.Classification, which is not available here" in msg


def test_route_condition_unknown_field():
    msg = check_error(graph(route([when("text.langauge", value="en")], {"a": None, "b": None})))
    assert "g/r: rules[0].when[0]: modelweave.v1.Text has no field 'langauge'" in msg


def test_route_condition_unknown_head():
    msg = check_error(graph(route([when("txt.language", value="en")], {"a": None, "b": None})))
    assert "does not start with one of" in msg
    assert "metadata" in msg


def test_route_condition_metadata_needs_key():
    msg = check_error(graph(route([when("metadata", value="x")], {"a": None, "b": None})))
    assert "needs a key" in msg
    checked = check(graph(route([when("metadata.tier", value="gold")], {"a": None, "b": None})))
    assert checked.nodes["g/r"].reads == frozenset()


def test_route_condition_non_numeric_comparison():
    msg = check_error(graph(route([when("text.language", op="lt", value=3)], {"a": None, "b": None})))
    assert "g/r: rules[0].when[0]: operator 'lt' needs a numeric field; 'text.language' is not" in msg
    flow = chain(model("cls", "Label"), route([when("classification.confidence", op="ge", value="high")],
                                              {"a": None, "b": None}))
    msg = check_error(graph(flow))
    assert "g/main/r: rules[0].when[0]: operator 'ge' needs a numeric value, got 'high'" in msg


def test_route_numeric_comparison_ok_and_second_rule_indexed():
    flow = chain(model("cls", "Label"), route([when("classification.label", value="x"),
                                               {"branch": "b", "when": [when("text.language", value="en"),
                                                                        when("classification.scores", op="le",
                                                                             value=1)]}],
                                              {"a": None, "b": None}))
    msg = check_error(graph(flow))
    assert "g/main/r: rules[1].when[1]: operator 'le' needs a numeric field" in msg


def test_router_must_produce_classification():
    flow = route([], {"a": None, "b": None}, router=typed("rt", ["Text"], "Generation"))
    msg = check_error(graph(chain(flow)))
    assert msg.startswith("g/main/r/rt:")
    assert "a router model must produce modelweave.v1.Classification, not modelweave.v1.Generation" in msg


def test_router_output_is_available_to_conditions_and_branches():
    flow = route([when("classification.confidence", op="lt", value=0.5)],
                 {"a": typed("uses-label", ["Classification"], "Generation"), "b": None},
                 router=model("rt", "Label"))
    checked = check(graph(flow, output=["Classification"]))
    assert "g/r/rt" in checked.nodes
    assert checked.model_paths["rt"] == "g/r/rt"


def test_router_produced_parts_are_not_input_reads():
    # The rule reads the router's own Classification: the route reads only Text from
    # its input, so the graph must not demand input.classification.
    flow = route([when("classification.confidence", op="lt", value=0.5)], {"a": None, "b": None},
                 router=model("rt", "Label"))
    checked = check(graph(flow))
    assert checked.nodes["g/r"].reads == {"Text"}


def test_route_output_is_intersection_of_branches():
    flow = route([when("text.language", value="fr")],
                 {"a": model("x", "Label"), "b": typed("y", ["Text"], "Generation")})
    checked = check(graph(flow))
    assert checked.output_types == {"Text"}
    assert checked.nodes["g/r"].writes == {"Classification", "Generation"}


# -- validate ----------------------------------------------------------------------------------


def validate(**extra: Any) -> dict[str, Any]:
    return {"kind": "validate", "name": "v", "target": model("gen", "Gen"), "validator": model("judge", "Judge"),
            **extra}


def test_validator_must_produce_verdict():
    msg = check_error(graph(chain(validate(validator=model("judge", "Label")))))
    assert msg.startswith("g/main/v/judge:")
    assert "a validator must produce modelweave.v1.Verdict, not modelweave.v1.Classification" in msg


def test_validator_reads_target_output():
    checked = check(graph(validate(), output=["Generation", "Verdict"]))
    info = checked.nodes["g/v"]
    assert info.reads == {"Text"}  # Generation comes from the target, Verdict is optional
    assert info.writes == {"Generation", "Verdict"}
    judge = checked.nodes["g/v/judge"]
    assert judge.available_in == {"Text", "Generation"}


def test_validator_needing_a_part_the_target_does_not_produce():
    msg = check_error(graph(validate(target=model("gen", "Tag"))))
    assert msg.startswith("g/v/judge:")
    assert "missing {modelweave.v1.Generation}" in msg


def test_escalate_sees_verdict_and_output_is_intersection():
    esc = typed("human", ["Text", "Verdict"], "Generation")
    checked = check(graph(validate(escalate=esc, on_failure="escalate"), output=["Generation", "Verdict"]))
    assert checked.nodes["g/v/human"].available_in == {"Text", "Verdict"}
    assert "Verdict" not in checked.nodes["g/v"].reads
    bad = typed("human", ["Text"], "Classification")
    msg = check_error(graph(validate(escalate=bad), output=["Generation"]))
    assert "declares output modelweave.v1.Generation" in msg


def test_feedback_state_must_be_declared():
    msg = check_error(graph(chain(validate(feedback=[{"state": "nowhere", "on_fail": 0.1}]))))
    assert msg.startswith("g/main/v:")
    assert "feedback[0].state 'nowhere' is not declared" in msg


def adaptive(state: str = "thr", initial: float = 0.5, lo: float = 0.1, hi: float = 0.9) -> dict[str, Any]:
    return {"state": state, "initial": initial, "min": lo, "max": hi}


def test_feedback_state_declared_by_route_condition():
    flow = chain(model("cls", "Label"),
                 route([when("classification.confidence", op="lt", value_from=adaptive())], {"a": None, "b": None}),
                 validate(feedback=[{"state": "thr", "on_fail": 0.1}]))
    checked = check(graph(flow))
    assert set(checked.states) == {"thr"}
    assert checked.states["thr"].initial == 0.5


def test_state_declared_twice_with_different_bounds():
    flow = chain(model("cls", "Label"),
                 route([when("classification.confidence", op="lt", value_from=adaptive())], {"a": None, "b": None}),
                 route([when("classification.confidence", op="gt", value_from=adaptive(hi=0.8))],
                       {"a": None, "b": None}, name="r2"))
    msg = check_error(graph(flow))
    assert msg.startswith("g/main/r2:")
    assert "state 'thr' is declared twice with different bounds" in msg


# -- parallel / aggregate -------------------------------------------------------------------


def parallel(strategy: str, branches: list[dict[str, Any]], **agg: Any) -> dict[str, Any]:
    return {"kind": "parallel", "name": "p", "aggregate": {"strategy": strategy, **agg}, "branches": branches}


@pytest.mark.parametrize(("strategy", "needed"), [("vote", "Classification"), ("mean", "Classification"),
                                                  ("concat", "Generation")])
def test_aggregate_needs_part_from_every_branch(strategy, needed):
    ok = "Label" if needed == "Classification" else "Gen"
    flow = parallel(strategy, [model("good", ok), model("bad", "Tag")])
    msg = check_error(graph(chain(flow)))
    assert msg.startswith("g/main/p/bad:")
    assert f"aggregate '{strategy}' needs modelweave.v1.{needed} from every branch" in msg
    assert "this branch produces {modelweave.v1.Text}" in msg


def test_vote_output_types():
    checked = check(graph(parallel("vote", [model("x", "Label"), model("y", "Label")]),
                          output=["Classification"]))
    info = checked.nodes["g/p"]
    assert info.available_out == {"Text", "Classification"}
    assert info.writes == {"Classification"}
    assert info.reads == {"Text"}


def test_merge_keeps_what_each_branch_writes():
    flow = parallel("merge", [model("cls", "Label"), model("tag", "Tag")])
    checked = check(graph(chain(flow), output=["Text", "Classification"]))
    info = checked.nodes["g/main/p"]
    assert info.writes == {"Classification", "Text"}
    assert info.available_out == {"Text", "Classification"}


def test_merge_refuses_branches_that_write_the_same_part():
    msg = check_error(graph(chain(parallel("merge", [model("a", "Label"), model("b", "Label")]))))
    assert msg.startswith("g/main/p:")
    assert "'a' and 'b' both write modelweave.v1.Classification" in msg


def test_merge_takes_no_weights_or_min_successful():
    for extra in ({"weights": [1.0, 2.0]}, {"min_successful": 1}):
        msg = check_error(graph(chain(parallel("merge", [model("a", "Label"), model("b", "Tag")], **extra))))
        assert "strategy 'merge' takes no weights and no min_successful" in msg


def test_first_valid_output_is_common_to_all_branches():
    flow = parallel("first_valid", [chain(model("x", "Label"), typed("y", ["Text"], "Generation"), name="c1"),
                                     model("z", "Label")])
    checked = check(graph(flow))
    assert checked.output_types == {"Text", "Classification"}


def test_custom_aggregate_function_must_import():
    msg = check_error(graph(chain(parallel("custom", [model("x", "Gen"), model("y", "Gen")],
                                           function="fakes:nope", produces="Generation"))))
    assert msg.startswith("g/main/p: aggregate.function:")
    assert "has no attribute 'nope'" in msg


def test_custom_aggregate_produces_must_be_known():
    msg = check_error(graph(parallel("custom", [model("x", "Gen"), model("y", "Gen")],
                                     function="fakes:longest", produces="Poem")))
    assert msg.startswith("g/p: aggregate.produces:")
    assert "unknown message type 'Poem'" in msg


def test_custom_aggregate_output_is_input_plus_produced_part():
    # The executor builds a custom aggregate's output from the parallel node's input
    # plus the produced part; branch outputs are not carried over, so the checker must
    # not promise them downstream.
    flow = chain(parallel("custom", [model("x", "Label"), model("y", "Label")],
                          function="fakes:label_count", produces="Generation"),
                 typed("after", ["Classification"], "Verdict"))
    msg = check_error(graph(flow))
    assert msg.startswith("g/main/after:")
    checked = check(graph(parallel("custom", [model("x", "Label"), model("y", "Label")],
                                   function="fakes:label_count", produces="Generation")))
    assert checked.output_types == {"Text", "Generation"}
    assert checked.nodes["g/p"].writes == {"Generation"}


# -- cache -----------------------------------------------------------------------------------


def test_cache_with_no_reads():
    body = typed("const", [], "Classification")
    msg = check_error(graph(chain({"kind": "cache", "name": "c", "body": body})))
    assert "g/main/c: the cached body reads no input parts; set key_fields" in msg
    checked = check(graph({"kind": "cache", "name": "c", "body": body, "key_fields": ["metadata.user"]}))
    assert checked.nodes["g/c"].reads == frozenset()


def test_cache_key_fields_are_checked():
    msg = check_error(graph({"kind": "cache", "name": "c", "body": model("x", "Label"),
                             "key_fields": ["text.content", "classification.label"]}))
    assert "g/c: key_fields[1]: field 'classification.label' reads modelweave.v1.Classification" in msg


def test_cache_reads_exclude_parts_written_inside():
    body = chain(model("x", "Label"), typed("y", ["Text", "Classification"], "Generation"), name="body")
    checked = check(graph({"kind": "cache", "name": "c", "body": body}))
    assert checked.nodes["g/c"].reads == {"Text"}
    assert checked.nodes["g/c"].writes == {"Classification", "Generation"}


# -- fallback and facts --------------------------------------------------------------------


def test_fallback_path_and_output_intersection():
    node = {**typed("main-model", ["Text"], "Generation"), "fallback": model("backup", "Label")}
    checked = check(graph(chain(node)))
    assert "g/main/main-model/backup" in checked.nodes
    assert checked.output_types == {"Text"}
    assert checked.nodes["g/main/main-model"].writes == {"Generation", "Classification"}
    assert any(e.label == "fallback" and e.target == "g/main/main-model/backup" for e in checked.edges)


def test_fallback_is_type_checked():
    node = {**model("a", "Label"), "fallback": typed("fb", ["Embedding"], "Classification")}
    msg = check_error(graph(chain(node)))
    assert msg.startswith("g/main/a/fb:")


def test_demo_graph_facts(demo_path: pathlib.Path):
    checked = check_graph(load_graph(demo_path))
    assert set(checked.models) == {"normalise", "language", "multilingual", "cheap", "negation-aware",
                                   "second-opinion", "neutral-default", "responder", "reply-check", "handoff"}
    assert checked.model_paths["cheap"] == "demo/main/sentiment-cache/by-language/english/cheap"
    assert checked.output_types == {"Text", "Classification", "Generation", "Verdict"}
    assert set(checked.states) == {"escalation_threshold"}
    assert checked.nodes["demo/main"].reads == {"Text"}
    cache = checked.nodes["demo/main/sentiment-cache"]
    assert cache.reads == {"Text"} and cache.writes == {"Classification"}
    edge_labels = {e.label for e in checked.edges}
    assert {"branch 0", "branch 1", "fallback", "target", "validator", "escalate", "other", "english"} <= edge_labels
