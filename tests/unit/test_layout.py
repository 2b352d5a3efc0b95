"""Co-location as a deployment choice: groups, nodes inside the ingress, one call per group run."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import pytest
from click.testing import CliRunner
from fakes import graph, model, spans_of, text

from modelweave.checker import check_graph
from modelweave.cli import main, serve_config
from modelweave.codecs import describe_graph
from modelweave.draw import to_mermaid
from modelweave.errors import DeadlineExceeded, GraphSpecError, ModelError, ReplicaLost
from modelweave.executor import Executor, ModelReply
from modelweave.fit import graph_asks
from modelweave.group_calls import run_members
from modelweave.layout import hop_paths
from modelweave.local import LocalCaller
from modelweave.model_calls import Outcome
from modelweave.spec import ModelNode, load_graph, parse_graph
from modelweave.trace import request_deadline
from modelweave.v1 import messages_pb2 as pb

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def _grouped(name: str, adapter: str, group: str | None = "prep", **params: Any) -> dict[str, Any]:
    node = model(name, adapter, **params)
    if group is not None:
        node["deployment"] = {"group": group}
    return node


def _chain_graph(group: str | None = "prep") -> dict[str, Any]:
    """a (Text) -> b (Text) -> c (Classification from the text), all in one group when ``group``."""
    return graph({"kind": "chain", "name": "main", "steps": [
        _grouped("a", "Tag", group, suffix="-a"),
        _grouped("b", "Tag", group, suffix="-b", language="en"),
        _grouped("c", "LabelFromText", group),
    ]})


class CountingCaller(LocalCaller):
    """LocalCaller that counts calls and group runs, and can lose the group's replica once."""

    def __init__(self, *args: Any, lose_first: bool = False, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.calls: list[str] = []
        self.runs: list[list[str]] = []
        self.deadlines: list[float | None] = []
        self.lose_first = lose_first

    async def call(self, model: ModelNode, message: pb.Message) -> ModelReply:
        self.calls.append(model.name)
        return await super().call(model, message)

    async def call_many(self, models: Sequence[ModelNode], message: pb.Message) -> list[Outcome]:
        self.runs.append([m.name for m in models])
        self.deadlines.append(request_deadline.get())
        if self.lose_first:
            self.lose_first = False
            raise ReplicaLost("group replica died")
        return await super().call_many(models, message)


class PlainCaller:
    """A caller with only ``call`` (like the unit tests' fakes and the batch stage caller)."""

    def __init__(self, inner: LocalCaller) -> None:
        self.inner = inner
        self.calls: list[str] = []

    async def call(self, model: ModelNode, message: pb.Message) -> ModelReply:
        self.calls.append(model.name)
        return await self.inner.call(model, message)


def _executor(data: dict[str, Any], caller_cls: Any = CountingCaller, **kw: Any) -> tuple[Executor, Any]:
    checked = check_graph(parse_graph(data))
    caller = caller_cls(checked, **kw)
    return Executor(checked, caller), caller


# -- planning -------------------------------------------------------------------------------


def test_a_group_is_one_deployment_with_the_settings_its_members_give() -> None:
    data = _chain_graph()
    data["flow"]["steps"][0]["deployment"]["ray_actor_options"] = {"num_cpus": 0.5}
    data["flow"]["steps"][2]["deployment"]["max_ongoing_requests"] = 16
    layout = check_graph(parse_graph(data)).layout
    assert set(layout.deployments) == {"prep"}
    plan = layout.deployments["prep"]
    assert plan.group and plan.members == ("a", "b", "c")
    assert plan.settings.ray_actor_options.num_cpus == 0.5 and plan.settings.max_ongoing_requests == 16
    assert layout.home == {"a": "prep", "b": "prep", "c": "prep"}


def test_conflicting_group_settings_are_refused_naming_both_nodes() -> None:
    data = _chain_graph()
    data["flow"]["steps"][0]["deployment"]["max_ongoing_requests"] = 8
    data["flow"]["steps"][1]["deployment"]["max_ongoing_requests"] = 16
    with pytest.raises(GraphSpecError) as exc:
        check_graph(parse_graph(data))
    message = exc.value.message
    assert "group 'prep'" in message and "max_ongoing_requests" in message
    assert "g/main/a" in message and "g/main/b" in message


@pytest.mark.parametrize(("change", "words"), [
    ({"batching": {"max_batch_size": 4}}, "batching is not supported in group"),
    ({"inline": True}, "contradicts deployment.group"),
])
def test_impossible_group_members_are_refused(change: dict[str, Any], words: str) -> None:
    data = _chain_graph()
    data["flow"]["steps"][1]["deployment"].update(change)
    with pytest.raises(GraphSpecError, match=words):
        check_graph(parse_graph(data))


def test_a_group_cannot_take_another_models_deployment_name() -> None:
    data = _chain_graph(group="c")
    data["flow"]["steps"][2].pop("deployment")  # c keeps its own deployment, named c
    data["flow"]["steps"][2]["deployment"] = {"inline": False}
    with pytest.raises(GraphSpecError, match="would share its deployment name with model node g/main/c"):
        check_graph(parse_graph(data))


def test_non_blocking_nodes_run_in_the_ingress_unless_they_ask_for_a_deployment() -> None:
    data = graph({"kind": "chain", "name": "main", "steps": [
        model("rules", "Tag"),                                                     # non-blocking, no settings
        {**model("busy", "Tag"), "deployment": {"num_replicas": 2}},              # asks for replicas
        {**model("kept", "Tag"), "deployment": {"inline": False}},                # says no
        model("heavy", "Sleep", seconds=0.0),                                      # blocking
        {**model("forced", "Sleep", seconds=0.0), "deployment": {"inline": True}},  # says yes
    ]})
    layout = check_graph(parse_graph(data)).layout
    assert layout.inline == ["rules", "forced"]
    assert set(layout.deployments) == {"busy", "kept", "heavy"}


def test_the_layout_survives_the_trip_through_plain_data() -> None:
    # Builders and replicas see the spec as data with defaults dropped (dump_graph) or filled
    # in (model_dump): every process must plan the same layout.
    from modelweave.spec import GraphSpec, dump_graph

    spec = load_graph(EXAMPLES / "triage-colocated.yaml")
    layouts = [check_graph(s).layout for s in (spec, parse_graph(dump_graph(spec)),
                                               GraphSpec.model_validate(spec.model_dump(mode="json")))]
    assert layouts[0].home == layouts[1].home == layouts[2].home


def test_only_consecutive_plain_steps_of_one_group_form_a_run() -> None:
    data = graph({"kind": "chain", "name": "main", "steps": [
        _grouped("a", "Tag"), _grouped("b", "Tag"),
        {**_grouped("t", "Tag"), "timeout_s": 1.0},  # its own call: it has its own time limit
        _grouped("c", "Tag"), _grouped("d", "Tag", group="other"), _grouped("e", "LabelFromText"),
    ]})
    runs = check_graph(parse_graph(data)).layout.runs
    assert [[m.name for m in run] for run in runs.values()] == [["a", "b"]]


# -- running ----------------------------------------------------------------------------------


def test_a_group_run_is_one_call_and_answers_like_one_call_per_node() -> None:
    grouped, caller = _executor(_chain_graph())
    plain, _ = _executor(_chain_graph(group=None))
    out = asyncio.run(grouped.run(text("hi")))
    ref = asyncio.run(plain.run(text("hi")))
    assert out.message == ref.message
    assert out.message.classification.label == "hi-a-b"
    assert caller.runs == [["a", "b", "c"]] and caller.calls == []
    spans = spans_of(out.trace, "model")
    assert [s.node for s in spans] == ["g/main/a", "g/main/b", "g/main/c"]
    assert all(s.cpu_ms > 0 and s.latency_ms > 0 for s in spans)
    assert caller.deadlines[0] is not None  # the request deadline travels with the run


def test_callers_without_call_many_are_called_one_node_at_a_time() -> None:
    checked = check_graph(parse_graph(_chain_graph()))
    caller = PlainCaller(LocalCaller(checked))
    out = asyncio.run(Executor(checked, caller).run(text("hi")))
    assert caller.calls == ["a", "b", "c"]
    assert out.message.classification.label == "hi-a-b"


def test_a_failing_member_keeps_the_spans_before_it_and_names_itself() -> None:
    data = graph({"kind": "chain", "name": "main", "steps": [
        _grouped("a", "Tag", suffix="-a"), _grouped("bad", "Fail"), _grouped("after", "Tag")]})
    ex, caller = _executor(data)
    with pytest.raises(ModelError) as exc:
        asyncio.run(ex.run(text("hi")))
    assert exc.value.node == "g/main/bad"
    spans = spans_of(exc.value.trace, "model")
    assert [(s.node, s.error) for s in spans] == [("g/main/a", ""), ("g/main/bad", "INTERNAL")]
    assert caller.adapters["after"].calls == 0  # type: ignore[attr-defined]


def test_a_lost_group_replica_is_retried_when_every_member_is_idempotent() -> None:
    ex, caller = _executor(_chain_graph(), lose_first=True)
    out = asyncio.run(ex.run(text("hi")))
    assert out.message.classification.label == "hi-a-b" and len(caller.runs) == 2
    failed = [s for s in out.trace.spans if s.error]
    assert [(s.node, s.error) for s in failed] == [("g/main/a", "UNAVAILABLE")]
    assert {s.retry for s in spans_of(out.trace, "model") if not s.error} == {1}


def test_a_lost_group_replica_is_not_retried_with_a_non_idempotent_member() -> None:
    data = _chain_graph()
    data["flow"]["steps"][1]["idempotent"] = False
    ex, caller = _executor(data, lose_first=True)
    with pytest.raises(ReplicaLost):
        asyncio.run(ex.run(text("hi")))
    assert len(caller.runs) == 1


def test_a_run_that_cannot_finish_before_the_deadline_is_not_started() -> None:
    ex, caller = _executor(_chain_graph())
    ex.hop_s.update({"a": 0.2, "b": 0.2, "c": 0.2})
    with pytest.raises(DeadlineExceeded) as exc:
        asyncio.run(ex.run(text("hi"), timeout_s=0.5))
    assert exc.value.node == "g/main/a" and caller.runs == []


def test_members_whose_caller_gave_up_are_skipped() -> None:
    checked = check_graph(parse_graph(_chain_graph()))
    caller = LocalCaller(checked)
    members = [(n, checked.nodes[checked.model_paths[n]].produces, caller.adapters[n]) for n in ("a", "b")]
    outcomes = run_members(members, text("hi"), deadline=time.time() - 1)
    assert len(outcomes) == 1 and isinstance(outcomes[0], DeadlineExceeded)
    assert caller.adapters["a"].calls == 0  # type: ignore[attr-defined]


# -- showing the layout -----------------------------------------------------------------------


def test_check_verbose_describe_draw_build_and_fit_show_the_groups() -> None:
    path = EXAMPLES / "triage-colocated.yaml"
    checked = check_graph(load_graph(path))
    result = CliRunner().invoke(main, ["check", "-v", str(path)])
    assert result.exit_code == 0, result.output
    assert "16 model nodes in 8 model deployments (6 in the ingress)" in result.output  # + 2 KeepPart
    assert "prep[normalise+language+guard]" in result.output
    first = hop_paths(checked)[0]
    assert first.choices == ("escalate=keep", "redaction=english", "answer-path=complaint")
    assert (first.serve_hops, first.in_process) == (3, 3)  # prep, tfidf, redact; handoff inline
    nodes = {n.path.rsplit("/", 1)[-1]: n for n in describe_graph(checked).nodes}
    assert nodes["language"].deployment == "prep" and nodes["language"].settings["placement"] == "group prep"
    assert nodes["handoff-blocked"].deployment == "Ingress"
    assert "group prep" in to_mermaid(checked) and "in ingress" in to_mermaid(checked)
    config = serve_config([checked.spec], host="127.0.0.1", http_port=1, grpc_port=2)
    assert {d["name"] for d in config["applications"][0]["deployments"]} == set(checked.layout.deployments)
    # Serve's router waits at most 50 ms (not 0.5 s) before placing a call on a replica that was
    # full, on every deployment and the ingress (the proxy's router); a node may override it.
    deployments = config["applications"][0]["deployments"]
    backoffs = {d["name"]: d["request_router_config"]["max_backoff_s"] for d in deployments}
    assert set(backoffs.values()) == {0.05} and set(backoffs) == set(checked.layout.deployments)
    from deployments.app import deployment_options  # imports Ray, as serve_config() does

    assert deployment_options(checked.spec.ingress)["request_router_config"] == {"max_backoff_s": 0.05}
    # A dead replica is replaced only after a failed health check: every deployment, the ingress
    # included, is probed every 2 s (Serve's default, 10 s, left a killed replica unnoticed that long).
    assert {d["health_check_period_s"] for d in deployments} == {2.0}
    assert deployment_options(checked.spec.ingress)["health_check_period_s"] == 2.0
    slower = checked.spec.ingress.model_copy(update={"health_check_period_s": 5.0})
    assert deployment_options(slower)["health_check_period_s"] == 5.0
    assert {a.name for a in graph_asks([checked.spec])} == {f"triage/{n}" for n in checked.layout.deployments} | {
        "triage/Ingress"}
