"""Graph specification: validation errors name the field path; loading and dumping."""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import pytest

from modelweave.errors import GraphSpecError, InvalidArgument, Status
from modelweave.spec import (
    AggregateSpec,
    ChainNode,
    Condition,
    DeploymentSettings,
    GraphSpec,
    ModelNode,
    ParallelNode,
    RouteNode,
    ValidateNode,
    dump_graph,
    load_graph,
    parse_graph,
)

IMPL = "fakes:Label"


def m(name: str = "a", **extra: Any) -> dict[str, Any]:
    return {"kind": "model", "name": name, "impl": IMPL, **extra}


def g(flow: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "g", "flow": flow, **extra}


def chain(*steps: dict[str, Any], name: str = "main") -> dict[str, Any]:
    return {"kind": "chain", "name": name, "steps": list(steps)}


def error_of(data: Any) -> str:
    with pytest.raises(GraphSpecError) as info:
        parse_graph(data)
    return str(info.value)


def error_lines(data: Any) -> list[str]:
    """The per-problem lines of a spec error, without the header."""
    return [line.strip() for line in error_of(data).splitlines()[1:]]


# -- valid graphs ---------------------------------------------------------------------------


def test_minimal_graph_defaults():
    spec = parse_graph(g(m()))
    assert isinstance(spec, GraphSpec)
    assert isinstance(spec.flow, ModelNode)
    assert spec.input == ["Text"]
    assert spec.output == []
    assert spec.timeout_s == 30.0
    # RAY_NOTES: Serve's default of 5 collapses composed apps; modelweave defaults to 64.
    assert spec.flow.deployment.max_ongoing_requests == 64
    assert spec.ingress.max_ongoing_requests == 256


def test_discriminated_union_builds_every_node_kind():
    spec = parse_graph(g(chain(
        m("a"),
        {"kind": "parallel", "name": "p", "aggregate": {"strategy": "vote"}, "branches": [m("b"), m("c")]},
        {"kind": "route", "name": "r", "default": "x", "branches": {"x": None}},
        {"kind": "validate", "name": "v", "target": m("t"), "validator": m("j")},
        {"kind": "cache", "name": "k", "body": m("d")},
    )))
    kinds = [s.kind for s in spec.flow.steps]
    assert kinds == ["model", "parallel", "route", "validate", "cache"]
    assert isinstance(spec.flow, ChainNode)
    assert isinstance(spec.flow.steps[1], ParallelNode)
    assert isinstance(spec.flow.steps[2], RouteNode)
    assert spec.flow.steps[2].branches == {"x": None}
    assert isinstance(spec.flow.steps[3], ValidateNode)
    assert spec.flow.steps[3].on_failure == "retry"
    assert spec.flow.steps[3].max_attempts == 2


def test_fallback_is_a_full_node():
    spec = parse_graph(g(m("a", fallback=chain(m("b"), name="fb"))))
    assert isinstance(spec.flow.fallback, ChainNode)
    assert spec.flow.fallback.steps[0].name == "b"


def test_dump_round_trips_and_omits_defaults():
    data = g(chain(m("a", params={"label": "x"}), m("b", deployment={"num_replicas": 2})))
    spec = parse_graph(copy.deepcopy(data))
    dumped = dump_graph(spec)
    assert parse_graph(dumped) == spec
    assert "timeout_s" not in dumped  # defaults are left out
    assert dumped["flow"]["steps"][1]["deployment"] == {"num_replicas": 2}


def test_dump_round_trips_every_node_kind(demo_path: pathlib.Path):
    spec = load_graph(demo_path)
    dumped = dump_graph(spec)
    assert parse_graph(dumped, "dumped") == spec
    cache = dumped["flow"]["steps"][2]
    assert (dumped["flow"]["kind"], cache["kind"], cache["body"]["kind"]) == ("chain", "cache", "route")
    ensemble = cache["body"]["branches"]["english"]["steps"][1]["branches"]["escalate"]
    assert ensemble["kind"] == "parallel"
    assert ensemble["fallback"]["kind"] == "model"
    assert dumped["flow"]["steps"][3]["escalate"]["kind"] == "model"


def test_parse_does_not_modify_input_dict():
    data = g(chain(m("a"), m("b")))
    before = copy.deepcopy(data)
    parse_graph(data)
    assert data == before


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["Upper", "1abc", "has space", "a" * 64, "", "dot.ted", "-lead"])
def test_bad_node_name_names_field_path(bad):
    lines = error_lines(g(chain(m("ok"), m(bad))))
    assert len(lines) == 1
    assert lines[0].startswith("flow.steps.1.name:")
    assert repr(bad) in lines[0]


@pytest.mark.parametrize("good", ["a", "a-b_c9", "x" * 63])
def test_good_node_names(good):
    assert parse_graph(g(m(good))).flow.name == good


def test_bad_graph_name():
    lines = error_lines({"name": "Bad Graph", "flow": m()})
    assert lines[0].startswith("name:")
    assert "graph name 'Bad Graph'" in lines[0]


def test_errors_are_all_reported_with_their_paths():
    lines = error_lines(g(chain(m("Bad"), m("ok", timeout_s=0), {"kind": "model", "name": "c"})))
    joined = "\n".join(lines)
    assert "flow.steps.0.name:" in joined
    assert "flow.steps.1.timeout_s:" in joined
    assert "flow.steps.2.impl:" in joined
    assert len(lines) == 3


def test_error_header_names_source():
    msg = error_of(g(m("Bad")))
    assert msg.startswith("invalid graph <dict>:")
    with pytest.raises(GraphSpecError, match=r"invalid graph my\.yaml:"):
        parse_graph(g(m("Bad")), "my.yaml")


def test_spec_error_is_invalid_argument():
    with pytest.raises(InvalidArgument) as info:
        parse_graph(g(m("Bad")))
    assert info.value.status is Status.INVALID_ARGUMENT


def test_unknown_field_is_rejected():
    lines = error_lines(g(m("a", colour="blue")))
    assert lines == ["flow.colour: Extra inputs are not permitted"]


def test_unknown_kind_is_rejected():
    lines = error_lines(g({"kind": "loop", "name": "x"}))
    assert lines[0].startswith("flow:")
    assert "'loop'" in lines[0]


def test_top_level_must_be_mapping():
    for data in ([1, 2], "text", None, 3):
        assert "top level must be a mapping" in error_of(data)


def test_missing_flow():
    assert error_lines({"name": "g"}) == ["flow: Field required"]


def test_route_branch_label_equal_to_a_kind_name_stays_in_the_path():
    # Pydantic's discriminator tags ("model", "chain" ...) are dropped from paths, but a
    # user's branch label that happens to be spelled like a kind must stay.
    lines = error_lines(g({"kind": "route", "name": "r", "default": "model",
                           "branches": {"model": m("Bad")}}))
    assert lines[0].startswith("flow.branches.model.name:"), lines


def test_user_key_spelled_like_a_kind_outside_branches_stays_in_the_path():
    lines = error_lines(g(m("a", deployment={"ray_actor_options": {"resources": {"model": "lots"}}})))
    assert lines[0].startswith("flow.deployment.ray_actor_options.resources.model:"), lines


def test_deep_path_through_route_and_validate():
    flow = {"kind": "route", "name": "r", "default": "x",
            "branches": {"x": {"kind": "validate", "name": "v", "target": m("t", cost=-1), "validator": m("j")}}}
    lines = error_lines(g(flow))
    assert lines[0].startswith("flow.branches.x.target.cost:")


# -- deployment settings ------------------------------------------------------------------


def test_replicas_xor_autoscaling():
    lines = error_lines(g(chain(m("a"), m("b", deployment={"num_replicas": 2, "autoscaling_config": {}}))))
    assert len(lines) == 1
    assert lines[0].startswith("flow.steps.1.deployment:")
    assert "either num_replicas or autoscaling_config" in lines[0]


def test_replicas_or_autoscaling_alone_are_fine():
    assert DeploymentSettings(num_replicas=3).num_replicas == 3
    d = DeploymentSettings(autoscaling_config={"min_replicas": 0, "max_replicas": 4})
    assert d.autoscaling_config is not None and d.autoscaling_config.max_replicas == 4


def test_ingress_replicas_xor_autoscaling():
    lines = error_lines(g(m(), ingress={"num_replicas": 2, "autoscaling_config": {"max_replicas": 3}}))
    assert len(lines) == 1
    assert lines[0].startswith("ingress:")
    assert "either num_replicas or autoscaling_config" in lines[0]


@pytest.mark.parametrize(
    ("auto", "needle"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas must be <= max_replicas"),
        ({"min_replicas": 1, "max_replicas": 3, "initial_replicas": 4}, "initial_replicas must lie between"),
        ({"min_replicas": 2, "max_replicas": 3, "initial_replicas": 1}, "initial_replicas must lie between"),
    ],
)
def test_autoscaling_bounds(auto, needle):
    lines = error_lines(g(m("a", deployment={"autoscaling_config": auto})))
    assert len(lines) == 1
    assert lines[0].startswith("flow.deployment.autoscaling_config:")
    assert needle in lines[0]


@pytest.mark.parametrize(
    ("auto", "field"),
    [
        ({"min_replicas": -1}, "min_replicas"),
        ({"max_replicas": 0}, "max_replicas"),
        ({"target_ongoing_requests": 0}, "target_ongoing_requests"),
        ({"upscale_delay_s": -1}, "upscale_delay_s"),
    ],
)
def test_autoscaling_field_ranges(auto, field):
    lines = error_lines(g(m("a", deployment={"autoscaling_config": auto})))
    assert lines[0].startswith(f"flow.deployment.autoscaling_config.{field}:")


def test_autoscaling_initial_within_bounds_is_fine():
    spec = parse_graph(g(m("a", deployment={"autoscaling_config": {"min_replicas": 1, "max_replicas": 3,
                                                                     "initial_replicas": 3}})))
    assert spec.flow.deployment.autoscaling_config.initial_replicas == 3


@pytest.mark.parametrize(
    ("deployment", "path"),
    [
        ({"num_replicas": 0}, "flow.deployment.num_replicas"),
        ({"max_ongoing_requests": 0}, "flow.deployment.max_ongoing_requests"),
        ({"max_queued_requests": -2}, "flow.deployment.max_queued_requests"),
        ({"router_max_backoff_s": 0}, "flow.deployment.router_max_backoff_s"),
        ({"batching": {"max_batch_size": 0}}, "flow.deployment.batching.max_batch_size"),
        ({"batching": {"batch_wait_timeout_s": 11}}, "flow.deployment.batching.batch_wait_timeout_s"),
        ({"ray_actor_options": {"num_gpus": -1}}, "flow.deployment.ray_actor_options.num_gpus"),
    ],
)
def test_deployment_field_ranges(deployment, path):
    lines = error_lines(g(m("a", deployment=deployment)))
    assert lines[0].startswith(path + ":"), lines


def test_batch_overrides_and_timeout_ranges():
    assert error_lines(g(m("a", batch={"batch_size": 0})))[0].startswith("flow.batch.batch_size:")
    assert error_lines(g(m("a"), timeout_s=0))[0].startswith("timeout_s:")
    assert error_lines(g(m("a"), limits={"max_request_bytes": 10}))[0].startswith("limits.max_request_bytes:")


# -- route -----------------------------------------------------------------------------------


def rule(branch: str, **cond: Any) -> dict[str, Any]:
    return {"branch": branch, "when": [{"field": "text.language", "op": "eq", "value": "en", **cond}]}


def test_route_default_must_be_a_branch():
    lines = error_lines(g({"kind": "route", "name": "r", "default": "nope", "rules": [rule("a")],
                           "branches": {"a": None, "b": None}}))
    assert lines[0].startswith("flow:")
    assert "default branch 'nope' is not one of ['a', 'b']" in lines[0]


def test_route_rule_branch_must_exist():
    lines = error_lines(g(chain({"kind": "route", "name": "r", "default": "a",
                                 "rules": [rule("a"), rule("zzz")], "branches": {"a": None, "b": None}})))
    assert lines[0].startswith("flow.steps.0:")
    assert "rules[1].branch 'zzz' is not one of ['a', 'b']" in lines[0]


def test_route_needs_rules_or_router_with_several_branches():
    msg = error_of(g({"kind": "route", "name": "r", "default": "a", "branches": {"a": None, "b": None}}))
    assert "needs 'rules' or a 'router'" in msg
    # ... but a router alone is enough, and so is a single branch.
    parse_graph(g({"kind": "route", "name": "r", "default": "a", "router": m("rt"),
                   "branches": {"a": None, "b": None}}))
    parse_graph(g({"kind": "route", "name": "r", "default": "a", "branches": {"a": None}}))


def test_route_needs_at_least_one_branch():
    lines = error_lines(g({"kind": "route", "name": "r", "default": "a", "branches": {}}))
    assert lines[0].startswith("flow.branches:")


def test_route_rule_needs_a_condition():
    lines = error_lines(g({"kind": "route", "name": "r", "default": "a", "branches": {"a": None},
                           "rules": [{"branch": "a", "when": []}]}))
    assert lines[0].startswith("flow.rules.0.when:")


def test_router_must_be_a_model_node():
    lines = error_lines(g({"kind": "route", "name": "r", "default": "a", "branches": {"a": None},
                           "router": chain(m("x"))}))
    assert any(line.startswith("flow.router.") for line in lines)


# -- conditions ------------------------------------------------------------------------------


def cond_error(**cond: Any) -> list[str]:
    return error_lines(g({"kind": "route", "name": "r", "default": "a", "branches": {"a": None, "b": None},
                          "rules": [{"branch": "b", "when": [{"field": "text.language", **cond}]}]}))


def test_condition_needs_a_value():
    lines = cond_error(op="eq")
    assert lines[0].startswith("flow.rules.0.when.0:")
    assert "operator 'eq' needs 'value' or 'value_from'" in lines[0]


def test_condition_value_and_value_from_are_exclusive():
    lines = cond_error(op="lt", value=0.5, value_from={"state": "s", "initial": 0.5, "min": 0, "max": 1})
    assert lines[0].startswith("flow.rules.0.when.0:")
    assert "not both" in lines[0]


@pytest.mark.parametrize("op", ["in", "not_in"])
def test_membership_needs_a_list(op):
    lines = cond_error(op=op, value="en")
    assert lines[0].startswith("flow.rules.0.when.0:")
    assert f"operator {op!r} needs a list value" in lines[0]


def test_condition_unknown_operator():
    lines = cond_error(op="approx", value=1)
    assert lines[0].startswith("flow.rules.0.when.0.op:")


def test_condition_valid_forms():
    assert Condition(field="text.language", op="exists").value is None
    assert Condition(field="text.language", op="in", value=["en", "fr"]).value == ["en", "fr"]
    assert Condition(field="classification.confidence", op="lt", value=0).value == 0  # 0 is a value
    c = Condition(field="classification.confidence", op="lt",
                  value_from={"state": "t", "initial": 0.5, "min": 0.1, "max": 0.9})
    assert c.value_from is not None and c.value_from.initial == 0.5
    assert Condition(field="text.language", value="en").op == "eq"


@pytest.mark.parametrize(("initial", "lo", "hi"), [(0.95, 0.1, 0.9), (0.05, 0.1, 0.9), (0.5, 0.9, 0.1)])
def test_adaptive_value_bounds(initial, lo, hi):
    lines = cond_error(op="lt", value_from={"state": "s", "initial": initial, "min": lo, "max": hi})
    assert lines[0].startswith("flow.rules.0.when.0.value_from:")
    assert "need min <= initial <= max" in lines[0]


# -- parallel / aggregate ------------------------------------------------------------------


def par(aggregate: dict[str, Any], n: int = 2) -> dict[str, Any]:
    return {"kind": "parallel", "name": "p", "aggregate": aggregate, "branches": [m(f"b{i}") for i in range(n)]}


def test_custom_aggregate_needs_function_and_produces():
    for agg in ({"strategy": "custom"}, {"strategy": "custom", "function": "fakes:longest"},
                {"strategy": "custom", "produces": "Generation"}):
        lines = error_lines(g(par(agg)))
        assert lines[0].startswith("flow.aggregate:"), lines
        assert "strategy 'custom' needs 'function' and 'produces'" in lines[0]
    ok = AggregateSpec(strategy="custom", function="fakes:longest", produces="Generation")
    assert ok.function == "fakes:longest"


def test_function_only_with_custom():
    lines = error_lines(g(par({"strategy": "vote", "function": "fakes:longest"})))
    assert lines[0].startswith("flow.aggregate:")
    assert "only used with strategy 'custom'" in lines[0]


def test_weights_length_must_match_branches():
    lines = error_lines(g(chain(par({"strategy": "mean", "weights": [1.0, 2.0]}, n=3))))
    assert lines[0].startswith("flow.steps.0:")
    assert "aggregate.weights has 2 entries for 3 branches" in lines[0]
    assert parse_graph(g(par({"strategy": "mean", "weights": [1.0, 2.0, 3.0]}, n=3)))


def test_min_successful_bounds():
    lines = error_lines(g(par({"strategy": "vote", "min_successful": 3})))
    assert "min_successful exceeds the number of branches" in lines[0]
    lines = error_lines(g(par({"strategy": "vote", "min_successful": 0})))
    assert lines[0].startswith("flow.aggregate.min_successful:")


def test_parallel_needs_two_branches():
    lines = error_lines(g(par({"strategy": "vote"}, n=1)))
    assert lines[0].startswith("flow.branches:")


def test_unknown_strategy():
    lines = error_lines(g(par({"strategy": "median"})))
    assert lines[0].startswith("flow.aggregate.strategy:")


# -- validate / cache / chain --------------------------------------------------------------


def test_escalate_needs_flow():
    lines = error_lines(g(chain({"kind": "validate", "name": "v", "on_failure": "escalate",
                                 "target": m("t"), "validator": m("j")})))
    assert lines[0].startswith("flow.steps.0:")
    assert "on_failure 'escalate' needs an 'escalate' flow" in lines[0]
    ok = parse_graph(g({"kind": "validate", "name": "v", "on_failure": "escalate", "target": m("t"),
                        "validator": m("j"), "escalate": m("e")}))
    assert ok.flow.escalate is not None


@pytest.mark.parametrize("attempts", [0, 11])
def test_max_attempts_range(attempts):
    lines = error_lines(g({"kind": "validate", "name": "v", "max_attempts": attempts,
                           "target": m("t"), "validator": m("j")}))
    assert lines[0].startswith("flow.max_attempts:")


def test_validator_must_be_a_model():
    lines = error_lines(g({"kind": "validate", "name": "v", "target": m("t"), "validator": chain(m("j"))}))
    assert any(line.startswith("flow.validator.") for line in lines)


def test_cache_settings_ranges():
    assert error_lines(g({"kind": "cache", "name": "c", "body": m(), "ttl_s": 0}))[0].startswith("flow.ttl_s:")
    assert error_lines(g({"kind": "cache", "name": "c", "body": m(), "max_entries": 0}))[0].startswith(
        "flow.max_entries:")


def test_chain_needs_steps():
    assert error_lines(g(chain()))[0].startswith("flow.steps:")


# -- files ---------------------------------------------------------------------------------


def test_load_graph_from_yaml(tmp_path: pathlib.Path):
    p = tmp_path / "g.yaml"
    p.write_text("name: g\nflow:\n  kind: model\n  name: a\n  impl: fakes:Label\n", encoding="utf-8")
    spec = load_graph(p)
    assert spec.flow.name == "a"
    assert load_graph(str(p)) == spec


def test_load_graph_from_json(tmp_path: pathlib.Path):
    p = tmp_path / "g.json"
    p.write_text('{"name": "g", "flow": {"kind": "model", "name": "a", "impl": "fakes:Label"}}', encoding="utf-8")
    assert load_graph(p).name == "g"


def test_missing_file(tmp_path: pathlib.Path):
    p = tmp_path / "nope.yaml"
    with pytest.raises(GraphSpecError) as info:
        load_graph(p)
    assert str(p) in str(info.value)
    assert "cannot read graph file" in str(info.value)
    assert "No such file" in str(info.value)


def test_yaml_syntax_error(tmp_path: pathlib.Path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: g\nflow: [unclosed\n", encoding="utf-8")
    with pytest.raises(GraphSpecError) as info:
        load_graph(p)
    assert f"graph file {p} is not valid YAML" in str(info.value)


def test_yaml_not_a_mapping_and_empty(tmp_path: pathlib.Path):
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(GraphSpecError, match="top level must be a mapping"):
        load_graph(p)
    e = tmp_path / "empty.yaml"
    e.write_text("", encoding="utf-8")
    with pytest.raises(GraphSpecError, match="top level must be a mapping"):
        load_graph(e)


def test_yaml_validation_error_names_file_and_path(tmp_path: pathlib.Path):
    p = tmp_path / "g.yaml"
    p.write_text("name: g\nflow:\n  kind: chain\n  name: c\n  steps:\n    - {kind: model, name: X, impl: a:b}\n",
                 encoding="utf-8")
    with pytest.raises(GraphSpecError) as info:
        load_graph(p)
    msg = str(info.value)
    assert msg.startswith(f"invalid graph {p}:")
    assert "flow.steps.0.name:" in msg


def test_demo_graph_parses(demo_path: pathlib.Path):
    spec = load_graph(demo_path)
    assert spec.name == "demo"
    assert [s.name for s in spec.flow.steps] == ["normalise", "language", "sentiment-cache", "reply"]
