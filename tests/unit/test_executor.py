"""The transport-free executor: every node kind and every failure path, with in-process adapters."""

from __future__ import annotations

import asyncio
import pathlib
import time
from typing import Any

import pytest
from fakes import build, graph, model, spans_of, text

from modelweave.checker import check_graph
from modelweave.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ModelError,
    ModelweaveError,
    Status,
    Unavailable,
)
from modelweave.executor import Executor
from modelweave.local import LocalCaller
from modelweave.spec import CacheNode, load_graph
from modelweave.state import MemoryCache, MemoryState
from modelweave.v1 import messages_pb2 as pb

pytestmark = pytest.mark.timeout(10)


def chain(*steps: dict[str, Any], name: str = "main", **extra: Any) -> dict[str, Any]:
    return {"kind": "chain", "name": name, "steps": list(steps), **extra}


def parallel(strategy: str, *branches: dict[str, Any], name: str = "p", **agg: Any) -> dict[str, Any]:
    return {"kind": "parallel", "name": name, "aggregate": {"strategy": strategy, **agg}, "branches": list(branches)}


def route(branches: dict[str, Any], default: str, rules: list[dict[str, Any]] | None = None, name: str = "r",
          **extra: Any) -> dict[str, Any]:
    return {"kind": "route", "name": name, "branches": branches, "default": default, "rules": rules or [], **extra}


def rule(branch: str, *conds: dict[str, Any], match: str = "all") -> dict[str, Any]:
    return {"branch": branch, "when": list(conds), "match": match}


def cond(field: str, op: str = "eq", value: Any = None, **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"field": field, "op": op, **extra}
    if value is not None:
        c["value"] = value
    return c


def validate(target: dict[str, Any], validator: dict[str, Any], name: str = "v", **extra: Any) -> dict[str, Any]:
    return {"kind": "validate", "name": name, "target": target, "validator": validator, **extra}


def cache(body: dict[str, Any], name: str = "c", **extra: Any) -> dict[str, Any]:
    return {"kind": "cache", "name": name, "body": body, **extra}


async def run(executor: Executor, message: pb.Message | None = None, **kw: Any):
    """Runs with a hard outer bound so a hang fails the test instead of stalling the suite."""
    return await asyncio.wait_for(executor.run(message or text(), **kw), timeout=5)


def nodes(trace: pb.Trace) -> list[str]:
    return [s.node for s in trace.spans]


# -- chain -------------------------------------------------------------------------------------


async def test_chain_runs_steps_in_order():
    ex, caller = build(graph(chain(model("a", "Tag", suffix="-a"), model("b", "Tag", suffix="-b"),
                                   model("c", "LabelFromText"))))
    result = await run(ex, text("hi"))
    assert result.message.text.content == "hi-a-b"
    assert result.message.classification.label == "hi-a-b"
    assert caller.adapters["b"].seen[0].text.content == "hi-a"
    assert caller.adapters["c"].seen[0].text.content == "hi-a-b"
    assert nodes(result.trace) == ["g/main/a", "g/main/b", "g/main/c"]
    assert all(s.kind == "model" and s.attempt == 1 and not s.error for s in result.trace.spans)
    assert result.trace.spans[0].model == "fakes:Tag"


async def test_input_message_is_not_mutated():
    ex, _ = build(graph(chain(model("a", "Tag", suffix="!", language="xx"), model("b", "Label"))))
    message = text("hello", user="u1")
    before = message.SerializeToString(deterministic=True)
    result = await run(ex, message)
    assert message.SerializeToString(deterministic=True) == before
    assert result.message.text.content == "hello!"
    assert result.message.metadata["user"] == "u1"
    assert not message.HasField("classification")


async def test_adapters_are_loaded_once_by_local_caller():
    ex, caller = build(graph(chain(model("a", "Label"), model("b", "Tag"))))
    assert caller.adapters["a"].loaded and caller.adapters["b"].loaded
    await run(ex)
    await run(ex)
    assert caller.adapters["a"].calls == 2


async def test_tensor_part_is_stored_under_node_name():
    ex, _ = build(graph(chain(model("vec", "Typed", produces="Tensor"), model("lab", "Label"))))
    result = await run(ex)
    assert list(result.message.tensors) == ["vec"]


# -- parallel ----------------------------------------------------------------------------------


async def test_parallel_branches_run_concurrently():
    ex, caller = build(graph(parallel("vote", model("s1", "Sleep", seconds=0.2, label="x"),
                                      model("s2", "Sleep", seconds=0.2, label="x"))))
    start = time.monotonic()
    result = await run(ex)
    elapsed = time.monotonic() - start
    assert caller.adapters["s1"].finished == 1 and caller.adapters["s2"].finished == 1
    assert result.message.classification.label == "x"
    assert elapsed < 0.35, f"two 0.2 s branches took {elapsed:.3f} s: not concurrent"


async def test_parallel_branches_get_independent_copies():
    branch0 = chain(model("shout", "Tag", suffix="!!!"), model("l0", "LabelFromText"), name="b0")
    ex, caller = build(graph(parallel("vote", branch0, model("l1", "LabelFromText"), weights=[1.0, 2.0])))
    result = await run(ex, text("hey"))
    assert caller.adapters["l1"].seen[0].text.content == "hey"
    # vote builds its output from the parallel node's input: branch-local changes stay local.
    assert result.message.text.content == "hey"
    assert result.message.classification.label == "hey"  # weight 2 beats weight 1


async def test_merge_combines_parts_each_branch_wrote_on_the_same_input():
    # One branch rewrites the text, the other classifies it (after a slower first step, so the
    # rewrite finishes first): the classifier still sees the input text, and the result carries
    # both the rewritten text and the label.
    classify = chain(model("slow", "Sleep", seconds=0.05), model("l", "LabelFromText"), name="classify")
    ex, caller = build(graph(parallel("merge", classify, model("tag", "Tag", suffix="!!!")),
                             output=["Text", "Classification"]))
    result = await run(ex, text("hey"))
    assert caller.adapters["l"].seen[0].text.content == "hey"
    assert result.message.text.content == "hey!!!"
    assert result.message.classification.label == "hey"
    (span,) = spans_of(result.trace, "parallel")
    assert span.detail == "merge: Classification, Text"


async def test_vote():
    ex, _ = build(graph(parallel("vote", model("a", "Label", label="pos", confidence=0.6),
                                 model("b", "Label", label="pos", confidence=0.8),
                                 model("c", "Label", label="neg", confidence=0.99))))
    result = await run(ex)
    c = result.message.classification
    assert (c.label, c.model) == ("pos", "vote")
    assert c.confidence == pytest.approx(2 / 3, abs=1e-6)
    assert {s.label: round(s.score, 4) for s in c.scores} == {"neg": 0.3333, "pos": 0.6667}
    span = spans_of(result.trace, "parallel")[0]
    assert span.node == "g/p"
    assert span.detail == "vote: pos (0.67)"


async def test_weighted_vote_and_tie_break_by_confidence():
    ex, _ = build(graph(parallel("vote", model("a", "Label", label="pos"), model("b", "Label", label="pos"),
                                 model("c", "Label", label="neg"), weights=[1.0, 1.0, 3.0])))
    assert (await run(ex)).message.classification.label == "neg"
    ex, _ = build(graph(parallel("vote", model("a", "Label", label="pos", confidence=0.6),
                                 model("b", "Label", label="neg", confidence=0.9))))
    assert (await run(ex)).message.classification.label == "neg"


async def test_mean_of_distributions_with_weights():
    a = model("a", "Label", label="pos", confidence=0.8, scores={"pos": 0.8, "neg": 0.2})
    b = model("b", "Label", label="neg", confidence=0.8, scores={"pos": 0.2, "neg": 0.8})
    ex, _ = build(graph(parallel("mean", a, b, weights=[3.0, 1.0])))
    c = (await run(ex)).message.classification
    assert (c.label, c.model) == ("pos", "mean")
    assert c.confidence == pytest.approx(0.65, abs=1e-6)
    ex, _ = build(graph(parallel("mean", a, b, weights=[1.0, 3.0])))
    c = (await run(ex)).message.classification
    assert c.label == "neg"
    assert {s.label: round(s.score, 4) for s in c.scores} == {"neg": 0.65, "pos": 0.35}


async def test_mean_without_scores_uses_label_confidence():
    ex, _ = build(graph(parallel("mean", model("a", "Label", label="x", confidence=0.9),
                                 model("b", "Label", label="y", confidence=0.5))))
    c = (await run(ex)).message.classification
    assert c.label == "x"
    assert c.confidence == pytest.approx(0.45, abs=1e-6)


async def test_first_valid_skips_failed_verdicts():
    bad = chain(model("g0", "Gen", text="bad answer"), model("j0", "Judge", require="good"), name="b0")
    good = chain(model("g1", "Gen", text="good answer"), model("j1", "Judge", require="good"), name="b1")
    ex, _ = build(graph(parallel("first_valid", bad, good)))
    result = await run(ex)
    assert result.message.generation.text == "good answer"
    assert result.message.verdict.passed
    assert spans_of(result.trace, "parallel")[0].detail == "first_valid: branch 1"


async def test_first_valid_takes_first_branch_without_verdict():
    ex, _ = build(graph(parallel("first_valid", model("a", "Gen", text="A"), model("b", "Gen", text="B"))))
    assert (await run(ex)).message.generation.text == "A"


async def test_first_valid_with_failing_branch_and_min_successful():
    ex, _ = build(graph(parallel("first_valid", model("a", "Fail", produces="Generation"),
                                 model("b", "Gen", text="B"), min_successful=1)))
    result = await run(ex)
    assert result.message.generation.text == "B"
    span = spans_of(result.trace, "parallel")[0]
    assert span.detail == "first_valid: branch 1; 1 branch(es) failed"


async def test_first_valid_none_valid_is_model_error_naming_node():
    bad0 = chain(model("g0", "Gen", text="x"), model("j0", "Judge", require="good"), name="b0")
    bad1 = chain(model("g1", "Gen", text="y"), model("j1", "Judge", require="good"), name="b1")
    ex, _ = build(graph(chain(parallel("first_valid", bad0, bad1))))
    with pytest.raises(ModelError, match="no branch produced a valid result") as info:
        await run(ex)
    assert info.value.node == "g/main/p"


async def test_concat():
    ex, _ = build(graph(parallel("concat", model("a", "Gen", text="one", source="s1", score=0.9),
                                 model("b", "Gen", text="", source="", score=0.8),
                                 model("c", "Gen", text="two", source="s3", score=0.3), separator=" | ")))
    g = (await run(ex)).message.generation
    assert g.text == "one | two"
    assert g.source == "s1,s3"
    assert g.score == pytest.approx(0.3)


async def test_custom_aggregate():
    ex, _ = build(graph(parallel("custom", model("a", "Gen", text="short"), model("b", "Gen", text="much longer"),
                                 function="fakes:longest", produces="Generation")))
    result = await run(ex)
    assert result.message.generation.text == "much longer"
    assert result.message.generation.source == "longest-of-2"
    assert spans_of(result.trace, "parallel")[0].detail == "custom: fakes:longest"


async def test_custom_aggregate_raising_is_model_error():
    ex, _ = build(graph(chain(parallel("custom", model("a", "Gen"), model("b", "Gen"),
                                       function="fakes:broken_aggregate", produces="Generation"))))
    spans: list[pb.Span] = []
    with pytest.raises(ModelError) as info:
        await run(ex, on_span=spans.append)
    assert "ValueError: aggregate exploded" in info.value.message
    assert info.value.node == "g/main/p"
    assert spans[-1].kind == "parallel" and spans[-1].error == "INTERNAL"


async def test_custom_aggregate_wrong_part_type_is_model_error():
    ex, _ = build(graph(parallel("custom", model("a", "Gen"), model("b", "Gen"),
                                 function="fakes:wrong_aggregate", produces="Generation")))
    with pytest.raises(ModelError, match="returned modelweave.v1.Text, declared Generation"):
        await run(ex)


async def test_min_successful_tolerates_a_failing_branch():
    ex, _ = build(graph(parallel("vote", model("a", "Label", label="x"), model("bad", "Fail"),
                                 model("c", "Label", label="y", confidence=0.95), min_successful=2)))
    spans: list[pb.Span] = []
    result = await run(ex, on_span=spans.append)
    assert result.message.classification.label == "y"
    assert result.message.classification.confidence == pytest.approx(0.5)
    failed = [s for s in result.trace.spans if s.error]
    assert [s.node for s in failed] == ["g/p/bad"]
    assert failed[0].error == "INTERNAL"
    assert spans_of(result.trace, "parallel")[0].detail.endswith("; 1 branch(es) failed")


async def test_parallel_fails_below_min_successful():
    ex, _ = build(graph(parallel("vote", model("a", "Label"), model("bad", "Fail", message="kaput"),
                                 model("c", "Label"))))
    spans: list[pb.Span] = []
    with pytest.raises(ModelError) as info:
        await run(ex, on_span=spans.append)
    assert info.value.node == "g/p/bad"
    assert "kaput" in info.value.message
    par = [s for s in spans if s.kind == "parallel"]
    assert par[0].detail == "2/3 branches succeeded, 3 needed"
    assert par[0].error == "INTERNAL"


async def test_parallel_raises_typed_error_of_first_failure():
    ex, _ = build(graph(parallel("vote", model("a", "Fail", typed=True, message="busy"),
                                 model("b", "Fail"), model("c", "Label"), min_successful=2)))
    with pytest.raises(Unavailable) as info:
        await run(ex)
    assert info.value.node == "g/p/a"


# -- route -------------------------------------------------------------------------------------


def language_route(**extra: Any) -> dict[str, Any]:
    return route({"fr": model("fr-model", "Label", label="fr"), "en": model("en-model", "Label", label="en")},
                 default="en", rules=[rule("fr", cond("text.language", value="fr"))], **extra)


async def test_route_by_rule():
    ex, caller = build(graph(chain(model("lang", "Tag", language="fr"), language_route())))
    result = await run(ex)
    assert result.message.classification.label == "fr"
    assert caller.adapters["en-model"].calls == 0
    route_span = spans_of(result.trace, "route")[0]
    assert (route_span.node, route_span.route, route_span.detail) == ("g/main/r", "fr", "rules[0]")
    assert nodes(result.trace) == ["g/main/lang", "g/main/r", "g/main/r/fr-model"]


async def test_route_default_when_no_rule_matches():
    ex, caller = build(graph(chain(model("lang", "Tag", language="de"), language_route())))
    result = await run(ex)
    assert result.message.classification.label == "en"
    assert caller.adapters["fr-model"].calls == 0
    span = spans_of(result.trace, "route")[0]
    assert (span.route, span.detail) == ("en", "default")


@pytest.mark.parametrize(("match", "expected"), [("all", "other"), ("any", "hit")])
async def test_rule_match_all_or_any(match, expected):
    r = route({"hit": model("h", "Label", label="hit"), "other": model("o", "Label", label="other")},
              default="other",
              rules=[rule("hit", cond("metadata.tier", value="gold"), cond("text.content", "matches", "^zzz"),
                          match=match)])
    ex, _ = build(graph(r))
    result = await run(ex, text("hello", tier="gold"))
    assert result.message.classification.label == expected


async def test_first_matching_rule_wins():
    r = route({"a": model("ma", "Label", label="a"), "b": model("mb", "Label", label="b"),
               "c": model("mc", "Label", label="c")}, default="c",
              rules=[rule("a", cond("text.content", "matches", "xyz")),
                     rule("b", cond("text.content", "matches", "hel")),
                     rule("a", cond("text.content", "matches", "hello"))])
    ex, _ = build(graph(r))
    result = await run(ex)
    assert result.message.classification.label == "b"
    assert spans_of(result.trace, "route")[0].detail == "rules[1]"


async def test_route_by_router_label():
    r = route({"billing": model("bill", "Gen", text="billing"), "tech": model("tech", "Gen", text="tech")},
              default="tech", router=model("rt", "Label", label="billing"))
    ex, _ = build(graph(r))
    result = await run(ex)
    assert result.message.generation.text == "billing"
    assert result.message.classification.label == "billing"  # the router's part stays on the envelope
    span = spans_of(result.trace, "route")[0]
    assert (span.route, span.detail) == ("billing", "router label 'billing'")
    assert nodes(result.trace) == ["g/r/rt", "g/r", "g/r/bill"]


async def test_router_label_unknown_goes_to_default():
    r = route({"billing": model("bill", "Gen", text="billing"), "tech": model("tech", "Gen", text="tech")},
              default="tech", router=model("rt", "Label", label="sales"))
    ex, _ = build(graph(r))
    result = await run(ex)
    assert result.message.generation.text == "tech"
    assert spans_of(result.trace, "route")[0].detail == "default"


async def test_rules_take_priority_over_router_label_and_may_read_its_output():
    r = route({"billing": model("bill", "Gen", text="billing"), "unsure": model("uns", "Gen", text="unsure")},
              default="billing", router=model("rt", "Label", label="billing", confidence=0.3),
              rules=[rule("unsure", cond("classification.confidence", "lt", 0.5))])
    ex, _ = build(graph(r))
    result = await run(ex)  # the input has no Classification: the router makes it
    assert result.message.generation.text == "unsure"


async def test_pass_through_branch():
    r = route({"skip": None, "work": model("w", "Label")}, default="work",
              rules=[rule("skip", cond("metadata.skip", "exists"))])
    ex, caller = build(graph(chain(r, model("after", "Tag", suffix="."))))
    result = await run(ex, text("hi", skip="yes"))
    assert caller.adapters["w"].calls == 0
    assert not result.message.HasField("classification")
    assert result.message.text.content == "hi."
    assert spans_of(result.trace, "route")[0].route == "skip"
    result = await run(ex, text("hi"))
    assert result.message.HasField("classification")


# -- adaptive thresholds and feedback --------------------------------------------------------


def adaptive_graph(confidence: float, on_fail: float = 0.1, on_pass: float = 0.0,
                   require: str = "never") -> dict[str, Any]:
    threshold = {"state": "thr", "initial": 0.5, "min": 0.4, "max": 0.8}
    return graph(chain(
        model("cls", "Label", label="pos", confidence=confidence),
        route({"keep": None, "esc": model("strong", "Label", label="strong")}, default="keep",
              rules=[rule("esc", cond("classification.confidence", "lt", value_from=threshold))]),
        validate(model("gen", "Gen", text="reply"), model("judge", "Judge", require=require), max_attempts=1,
                 feedback=[{"state": "thr", "on_fail": on_fail, "on_pass": on_pass}]),
    ))


async def test_adaptive_threshold_moves_with_feedback_and_clamps():
    state = MemoryState()
    ex, _ = build(adaptive_graph(confidence=0.65), state=state, state_refresh_s=60)
    labels, details = [], []
    for _ in range(6):
        result = await run(ex)
        labels.append(result.message.classification.label)
        details.append(spans_of(result.trace, "route")[0].detail)
    # thresholds seen: 0.5, 0.6, 0.7, 0.8, 0.8, 0.8 (each failed verdict adds 0.1, max 0.8)
    assert labels == ["pos", "pos", "strong", "strong", "strong", "strong"]
    assert details[0] == "default"
    assert details[2] == "rules[0] (thr=0.700)"
    assert details[-1] == "rules[0] (thr=0.800)"
    assert state.values["thr"] == pytest.approx(0.8)


async def test_adaptive_threshold_clamps_at_min_on_passes():
    state = MemoryState()
    ex, _ = build(adaptive_graph(confidence=0.45, on_fail=0.0, on_pass=-0.03, require="reply"), state=state)
    labels = [(await run(ex)).message.classification.label for _ in range(6)]
    # 0.5 -> 0.47 -> 0.44 -> 0.41 -> 0.40 (clamped): 0.45 < thr only for the first two requests
    assert labels == ["strong", "strong", "pos", "pos", "pos", "pos"]
    assert state.values["thr"] == pytest.approx(0.4)


async def test_threshold_from_shared_store_is_reread_after_refresh_interval():
    state = MemoryState()
    cached, _ = build(adaptive_graph(confidence=0.65, on_fail=0.0), state=state, state_refresh_s=60)
    fresh, _ = build(adaptive_graph(confidence=0.65, on_fail=0.0), state=state, state_refresh_s=0)
    assert (await run(cached)).message.classification.label == "pos"
    assert (await run(fresh)).message.classification.label == "pos"
    state.values["thr"] = 0.7  # another replica moved it
    assert (await run(cached)).message.classification.label == "pos"  # still the value read 0 s ago
    assert (await run(fresh)).message.classification.label == "strong"


class BrokenState:
    """A shared state store that is down."""

    def __init__(self) -> None:
        self.gets = 0
        self.adjusts = 0

    async def get(self, var):
        self.gets += 1
        raise ConnectionError("state store down")

    async def adjust(self, var, delta):
        self.adjusts += 1
        raise ConnectionError("state store down")


async def test_state_store_outage_uses_initial_and_never_fails_request():
    state = BrokenState()
    ex, _ = build(adaptive_graph(confidence=0.45), state=state, state_refresh_s=0)
    result = await run(ex)
    assert result.message.classification.label == "strong"  # 0.45 < initial 0.5
    assert state.gets == 1 and state.adjusts == 1
    assert result.message.verdict.passed is False


# -- validate ---------------------------------------------------------------------------------


async def test_validate_retry_until_pass():
    v = validate(model("reply", "Reply"), model("judge", "Judge", require="second"), max_attempts=3)
    ex, caller = build(graph(chain(v)))
    result = await run(ex)
    assert result.message.generation.text == "second"
    assert result.message.generation.candidate == 1
    assert result.message.verdict.passed
    seen = caller.adapters["reply"].seen
    assert [m.metadata["attempt"] for m in seen] == ["1", "2"]
    assert not seen[1].HasField("verdict")  # plain retry does not show the previous verdict
    assert [m.generation.text for m in caller.adapters["judge"].seen] == ["first", "second"]
    trace = result.trace
    assert [(s.node, s.attempt, s.verdict) for s in trace.spans] == [
        ("g/main/v/reply", 1, ""), ("g/main/v/judge", 1, "failed"),
        ("g/main/v/reply", 2, ""), ("g/main/v/judge", 2, "passed"),
        ("g/main/v", 2, "passed"),
    ]
    assert trace.spans[-1].kind == "validate"


async def test_validate_first_attempt_pass_runs_once():
    ex, caller = build(graph(validate(model("reply", "Reply"), model("judge", "Judge", require="first"))))
    result = await run(ex)
    assert caller.adapters["reply"].calls == 1
    assert spans_of(result.trace, "validate")[0].attempt == 1


async def test_validator_does_not_see_a_stale_verdict():
    v = validate(model("reply", "Reply"), model("judge", "Judge", require="second"), max_attempts=2)
    ex, caller = build(graph(chain(model("pre-gen", "Gen", text="x"), model("pre-judge", "Judge", require="x"), v)))
    await run(ex)
    assert all(not m.HasField("verdict") for m in caller.adapters["judge"].seen)


async def test_validate_exhausted_accept_returns_last_attempt():
    v = validate(model("reply", "Reply"), model("judge", "Judge", require="zzz"), max_attempts=2)
    ex, _ = build(graph(v))
    result = await run(ex)
    assert result.message.generation.text == "second"
    assert result.message.verdict.passed is False
    span = spans_of(result.trace, "validate")[0]
    assert (span.verdict, span.attempt) == ("failed", 2)
    assert span.detail == "exhausted: missing 'zzz'"


async def test_validate_exhausted_error_is_failed_precondition():
    v = validate(model("reply", "Reply"), model("judge", "Judge", require="zzz"), max_attempts=3,
                 on_exhausted="error")
    ex, caller = build(graph(chain(v)))
    with pytest.raises(FailedPrecondition) as info:
        await run(ex)
    assert info.value.status is Status.FAILED_PRECONDITION
    assert info.value.node == "g/main/v"
    assert info.value.message == "validation failed after 3 attempt(s): missing 'zzz'"
    assert caller.adapters["reply"].calls == 3


async def test_refine_shows_previous_verdict_to_target():
    v = validate(model("writer", "RefineReply"), model("judge", "Judge", require="fixed"), on_failure="refine",
                 max_attempts=2)
    ex, caller = build(graph(v))
    result = await run(ex)
    seen = caller.adapters["writer"].seen
    assert not seen[0].HasField("verdict")
    assert seen[1].verdict.passed is False
    assert seen[1].verdict.reason == "missing 'fixed'"
    assert result.message.generation.text == "fixed: missing 'fixed'"
    assert result.message.verdict.passed


async def test_escalate_after_one_failure():
    v = validate(model("reply", "Reply"), model("judge", "Judge", require="zzz"), on_failure="escalate",
                 max_attempts=5, escalate=model("human", "Gen", text="a person will call"))
    ex, caller = build(graph(chain(v)))
    result = await run(ex)
    assert caller.adapters["reply"].calls == 1
    assert result.message.generation.text == "a person will call"
    seen = caller.adapters["human"].seen[0]
    assert seen.verdict.passed is False and seen.verdict.reason == "missing 'zzz'"
    assert seen.metadata["escalated"] == "g/main/v"
    assert not seen.HasField("generation")  # escalation starts from the validate node's input
    vspan = spans_of(result.trace, "validate")[0]
    assert (vspan.verdict, vspan.route) == ("failed", "escalate")
    assert vspan.detail == "escalating: missing 'zzz'"
    human = result.trace.spans[-2]  # spans are listed as hops end: the node's own span ends last
    assert human.node == "g/main/v/human" and human.attempt == 2
    assert result.trace.spans[-1] == vspan
    assert vspan.start_ms <= human.start_ms and human.start_ms + human.latency_ms <= vspan.start_ms + vspan.latency_ms


async def test_retry_then_escalate():
    v = validate(model("reply", "Reply"), model("judge", "Judge", require="zzz"), max_attempts=2,
                 escalate=model("human", "Gen", text="human"), on_exhausted="error")
    ex, caller = build(graph(v))
    result = await run(ex)  # escalation wins over on_exhausted
    assert caller.adapters["reply"].calls == 2
    assert result.message.generation.text == "human"
    assert [(s.node, s.attempt) for s in result.trace.spans[-2:]] == [("g/v/human", 3), ("g/v", 2)]


async def test_validate_target_error_propagates():
    ex, _ = build(graph(validate(model("bad", "Fail", produces="Generation"), model("judge", "Judge"))))
    with pytest.raises(ModelError) as info:
        await run(ex)
    assert info.value.node == "g/v/bad"


# -- cache ------------------------------------------------------------------------------------


def cached_label(**extra: Any) -> dict[str, Any]:
    return graph(chain(cache(model("cls", "LabelFromText"), **extra), model("after", "Tag", suffix="+")),
                 input=["Text", "Embedding"])


def text_emb(content: str = "hello", values: tuple[float, ...] = (1.0,), **metadata: str) -> pb.Message:
    return pb.Message(text=pb.Text(content=content), embedding=pb.Embedding(values=values), metadata=metadata)


async def test_cache_miss_then_hit():
    ex, caller = build(cached_label())
    first = await run(ex, text_emb())
    second = await run(ex, text_emb())
    assert caller.adapters["cls"].calls == 1
    assert caller.adapters["after"].calls == 2  # steps after the cache still run
    assert second.message == first.message
    assert [s.cache_hit for s in spans_of(first.trace, "cache")] == [False]
    assert [s.cache_hit for s in spans_of(second.trace, "cache")] == [True]
    assert "g/main/c/cls" not in nodes(second.trace)
    assert spans_of(second.trace, "cache")[0].node == "g/main/c"


async def test_cache_key_covers_only_parts_read():
    ex, caller = build(cached_label())
    await run(ex, text_emb("hello", (1.0,), user="a"))
    # metadata and an unread part (Embedding) differ: still a hit
    hit = await run(ex, text_emb("hello", (9.0, 9.0), user="b"))
    assert caller.adapters["cls"].calls == 1
    assert spans_of(hit.trace, "cache")[0].cache_hit
    assert hit.message.metadata["user"] == "b"  # the hit only restores what the body writes
    assert list(hit.message.embedding.values) == [9.0, 9.0]
    # the text it reads differs: a miss
    miss = await run(ex, text_emb("hello!"))
    assert caller.adapters["cls"].calls == 2
    assert not spans_of(miss.trace, "cache")[0].cache_hit
    assert miss.message.classification.label == "hello!"


async def test_cache_key_fields():
    ex, caller = build(graph(cache(model("cls", "LabelFromText"), key_fields=["metadata.user"])))
    await run(ex, text("one", user="u1"))
    same_user = await run(ex, text("two", user="u1"))
    assert same_user.message.classification.label == "one"
    assert caller.adapters["cls"].calls == 1
    other = await run(ex, text("two", user="u2"))
    assert other.message.classification.label == "two"


async def test_cache_ttl():
    ex, caller = build(cached_label(ttl_s=0.05))
    await run(ex, text_emb())
    await run(ex, text_emb())
    assert caller.adapters["cls"].calls == 1
    await asyncio.sleep(0.08)
    result = await run(ex, text_emb())
    assert caller.adapters["cls"].calls == 2
    assert not spans_of(result.trace, "cache")[0].cache_hit


async def test_cache_size_bound_and_factory():
    made: dict[str, MemoryCache] = {}

    def factory(path: str, node: CacheNode) -> MemoryCache:
        made[path] = MemoryCache(node.ttl_s, node.max_entries)
        return made[path]

    ex, caller = build(cached_label(max_entries=1), cache_factory=factory)
    assert list(made) == ["g/main/c"]
    for content in ("a", "b", "a"):
        await run(ex, text_emb(content))
    assert caller.adapters["cls"].calls == 3  # "a" was evicted by "b"
    assert len(made["g/main/c"]) == 1
    await run(ex, text_emb("a"))
    assert caller.adapters["cls"].calls == 3
    assert made["g/main/c"].hits == 1


class BrokenCache:
    """A cache backend that is down."""

    def __init__(self, fail_put: bool = True) -> None:
        self.fail_put = fail_put
        self.gets = 0
        self.puts = 0

    async def get(self, key: str) -> bytes | None:
        self.gets += 1
        raise ConnectionError("cache down")

    async def put(self, key: str, value: bytes) -> None:
        self.puts += 1
        if self.fail_put:
            raise ConnectionError("cache down")


async def test_cache_backend_raising_is_a_miss():
    backend = BrokenCache()
    ex, caller = build(cached_label(), cache_factory=lambda path, node: backend)
    for _ in range(2):
        result = await run(ex, text_emb())
        assert result.message.classification.label == "hello"
        assert not spans_of(result.trace, "cache")[0].cache_hit
    assert caller.adapters["cls"].calls == 2
    assert backend.gets == 2 and backend.puts == 2


async def test_cache_restores_all_parts_the_body_writes():
    body = chain(model("lang", "Tag", language="fr"), model("cls", "LabelFromText"), name="body")
    ex, caller = build(graph(cache(body)))
    first = await run(ex, text("bonjour"))
    second = await run(ex, text("bonjour"))
    assert caller.adapters["cls"].calls == 1
    assert second.message.text.language == "fr"
    assert second.message.classification.label == "bonjour"
    assert second.message == first.message


# -- timeouts and deadlines ------------------------------------------------------------------


async def test_node_timeout_is_deadline_exceeded_naming_node():
    slow = {**model("slow", "Sleep", seconds=5), "timeout_s": 0.05}
    ex, caller = build(graph(chain(model("a", "Tag"), slow)))
    start = time.monotonic()
    try:
        with pytest.raises(DeadlineExceeded) as info:
            await run(ex)
    finally:
        caller.adapters["slow"].release.set()
    assert time.monotonic() - start < 1.0
    assert info.value.node == "g/main/slow"
    assert info.value.status is Status.DEADLINE_EXCEEDED
    assert "node timeout of 50 ms exceeded" in str(info.value)


async def test_node_timeout_on_a_composite_node():
    inner = chain(model("fast", "Tag"), model("slow", "Sleep", seconds=5), name="inner", timeout_s=0.05)
    ex, caller = build(graph(chain(inner)))
    try:
        with pytest.raises(DeadlineExceeded) as info:
            await run(ex)
    finally:
        caller.adapters["slow"].release.set()
    assert info.value.node == "g/main/inner"


async def test_request_deadline():
    ex, caller = build(graph(chain(model("slow", "Sleep", seconds=5)), timeout_s=0.1))
    start = time.monotonic()
    try:
        with pytest.raises(DeadlineExceeded) as info:
            await run(ex)
    finally:
        caller.adapters["slow"].release.set()
    assert time.monotonic() - start < 1.0
    assert info.value.message == "request deadline of 100 ms exceeded"


async def test_request_deadline_argument_overrides_graph_timeout():
    ex, caller = build(graph(parallel("vote", model("s1", "Sleep", seconds=5), model("s2", "Sleep", seconds=5))))
    start = time.monotonic()
    try:
        with pytest.raises(DeadlineExceeded, match="request deadline of 80 ms"):
            await run(ex, timeout_s=0.08)
    finally:
        caller.adapters["s1"].release.set()
        caller.adapters["s2"].release.set()
    assert time.monotonic() - start < 1.0


async def test_node_timeout_triggers_fallback():
    slow = {**model("slow", "Sleep", seconds=5), "timeout_s": 0.05, "fallback": model("quick", "Label", label="q")}
    ex, caller = build(graph(slow))
    try:
        result = await run(ex)
    finally:
        caller.adapters["slow"].release.set()
    assert result.message.classification.label == "q"
    fb = spans_of(result.trace, "fallback")[0]
    assert fb.error == "DEADLINE_EXCEEDED"


# -- model failures and fallbacks ------------------------------------------------------------


async def test_model_raising_is_model_error_with_node_path():
    ex, _ = build(graph(chain(model("ok", "Tag"), chain(model("bad", "Fail", message="kaboom"), name="inner"))))
    spans: list[pb.Span] = []
    with pytest.raises(ModelError) as info:
        await run(ex, on_span=spans.append)
    err = info.value
    assert err.node == "g/main/inner/bad"
    assert err.status is Status.INTERNAL
    assert err.message == "model failed: RuntimeError: kaboom"
    assert isinstance(err.__cause__, RuntimeError)
    assert [(s.node, s.error) for s in spans] == [("g/main/ok", ""), ("g/main/inner/bad", "INTERNAL")]
    assert spans[-1].detail == "RuntimeError: kaboom"


async def test_typed_model_error_keeps_status_and_gets_node_path():
    ex, _ = build(graph(chain(model("busy", "Fail", typed=True, message="overloaded"))))
    with pytest.raises(Unavailable) as info:
        await run(ex)
    assert info.value.node == "g/main/busy"
    assert info.value.status is Status.UNAVAILABLE


async def test_wrong_part_type_is_model_error():
    ex, _ = build(graph(chain(model("liar", "WrongPart"))))
    spans: list[pb.Span] = []
    with pytest.raises(ModelError) as info:
        await run(ex, on_span=spans.append)
    assert info.value.node == "g/main/liar"
    assert "returned modelweave.v1.Text, declared Classification" in info.value.message
    assert spans[-1].error == "INTERNAL"


async def test_non_protobuf_return_is_model_error():
    ex, _ = build(graph(chain(model("odd", "NotAMessage"))))
    with pytest.raises(ModelError) as info:
        await run(ex)
    assert info.value.node == "g/main/odd"
    assert "returned dict" in info.value.message


async def test_wrong_output_count_is_model_error():
    ex, _ = build(graph(chain(model("many", "TooMany"))))
    with pytest.raises(ModelError, match="2 outputs for 1 input"):
        await run(ex)


async def test_fallback_used_on_failure():
    bad = {**model("bad", "Fail"), "fallback": model("backup", "Label", label="safe")}
    ex, _ = build(graph(chain(bad, model("after", "Tag", suffix="."))))
    streamed: list[pb.Span] = []
    result = await run(ex, on_span=streamed.append)
    assert result.message.classification.label == "safe"
    assert result.message.text.content == "hello world."
    assert nodes(result.trace) == ["g/main/bad", "g/main/bad/backup", "g/main/bad/backup", "g/main/after"]
    failed, fb, backup = result.trace.spans[:3]
    assert failed.kind == "model" and failed.error == "INTERNAL"
    assert fb.kind == "fallback" and fb.error == "INTERNAL"
    assert fb.detail == "fallback after INTERNAL: model failed: RuntimeError: boom"
    assert backup.kind == "model" and not backup.error


async def test_fallback_runs_on_the_nodes_original_input():
    failing_chain = chain(model("mangle", "Tag", suffix="-mangled"), model("bad", "Fail"), name="risky",
                          fallback=model("backup", "LabelFromText"))
    ex, caller = build(graph(chain(failing_chain)))
    result = await run(ex, text("orig"))
    assert caller.adapters["backup"].seen[0].text.content == "orig"
    assert result.message.classification.label == "orig"
    assert result.message.text.content == "orig"


async def test_failing_fallback_raises_its_own_error():
    bad = {**model("bad", "Fail"), "fallback": model("also-bad", "Fail", typed=True, message="nope")}
    ex, _ = build(graph(bad))
    with pytest.raises(Unavailable) as info:
        await run(ex)
    assert info.value.node == "g/bad/also-bad"


async def test_validation_failure_triggers_fallback_of_validate_node():
    v = validate(model("reply", "Reply"), model("judge", "Judge", require="zzz"), on_exhausted="error",
                 fallback=model("canned", "Gen", text="canned"))
    ex, _ = build(graph(v))
    result = await run(ex)
    assert result.message.generation.text == "canned"
    assert spans_of(result.trace, "fallback")[0].error == "FAILED_PRECONDITION"


# -- input checks ----------------------------------------------------------------------------


async def test_missing_input_part_is_invalid_argument():
    ex, caller = build(graph(chain(model("a", "Label"))))
    with pytest.raises(InvalidArgument) as info:
        await run(ex, pb.Message(metadata={"x": "y"}))
    assert info.value.message == "input.text is required by graph 'g'"
    assert caller.adapters["a"].calls == 0


async def test_missing_non_text_input_part():
    ex, _ = build(graph(model("a", "Typed", consumes=["Text", "Embedding"], produces="Classification"),
                        input=["Text", "Embedding"]))
    with pytest.raises(InvalidArgument, match=r"input\.embedding is required"):
        await run(ex, text())
    with pytest.raises(InvalidArgument, match=r"input\.text is required"):
        await run(ex, pb.Message(embedding=pb.Embedding(values=[1.0])))
    ok = await run(ex, pb.Message(text=pb.Text(content="x"), embedding=pb.Embedding(values=[1.0])))
    assert ok.message.HasField("classification")


async def test_tensor_input_part():
    ex, _ = build(graph(model("a", "Typed", consumes=["Tensor"], produces="Classification"), input=["Tensor"]))
    with pytest.raises(InvalidArgument, match=r"input\.tensors is required"):
        await run(ex, pb.Message())
    ok = await run(ex, pb.Message(tensors={"x": pb.Tensor(shape=[1])}))
    assert ok.message.HasField("classification")


@pytest.mark.parametrize("content", ["", "   \n\t"])
async def test_empty_text_is_invalid_argument(content):
    ex, _ = build(graph(model("a", "Label")))
    with pytest.raises(InvalidArgument, match=r"input\.text\.content must not be empty"):
        await run(ex, text(content))


async def test_router_output_is_not_required_as_input():
    r = route({"a": None, "b": None}, default="a", router=model("rt", "Label", confidence=0.2),
              rules=[rule("b", cond("classification.confidence", "lt", 0.5))])
    ex, _ = build(graph(r))
    result = await run(ex, text())
    assert spans_of(result.trace, "route")[0].route == "b"


# -- trace -------------------------------------------------------------------------------------


async def test_trace_request_id_and_totals():
    ex, _ = build(graph(chain(model("a", "Tag"), model("b", "Label"))))
    result = await run(ex, request_id="req-42")
    assert result.trace.request_id == "req-42"
    assert result.trace.total_ms > 0
    generated = (await run(ex)).trace.request_id
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert generated != (await run(ex)).trace.request_id
    starts = [s.start_ms for s in result.trace.spans]
    assert starts == sorted(starts)
    assert all(s.latency_ms >= 0 for s in result.trace.spans)


async def test_one_span_per_hop_over_every_kind():
    flow = chain(
        cache(model("tagger", "Tag", language="en"), name="k"),
        route({"en": parallel("vote", model("x", "Label"), model("y", "Label")), "other": None}, default="other",
              rules=[rule("en", cond("text.language", value="en"))]),
        validate(model("reply", "Reply"), model("judge", "Judge", require="second")),
    )
    ex, _ = build(graph(flow))
    streamed: list[pb.Span] = []
    result = await run(ex, on_span=streamed.append)
    got = [(s.node, s.kind) for s in result.trace.spans]
    assert got == [
        ("g/main/k/tagger", "model"), ("g/main/k", "cache"),
        ("g/main/r", "route"),
        ("g/main/r/p/x", "model"), ("g/main/r/p/y", "model"), ("g/main/r/p", "parallel"),
        ("g/main/v/reply", "model"), ("g/main/v/judge", "model"),
        ("g/main/v/reply", "model"), ("g/main/v/judge", "model"), ("g/main/v", "validate"),
    ]
    assert list(streamed) == list(result.trace.spans)  # streamed in the same order, as each hop finished


async def test_span_times_nest_children_inside_their_node():
    """A node's span starts when the node starts, though it is recorded when it ends.

    Exporters (OTLP) draw ``start_ms`` .. ``start_ms + latency_ms``; a cache, validate or
    route span stamped with its end time would start after the models it ran.
    """
    flow = chain(
        model("first", "Tag"),
        cache(model("tagger", "Tag", language="en"), name="k"),
        route({"en": parallel("vote", model("x", "Label"), model("y", "Label")), "other": None}, default="other",
              router=model("rt", "Label", confidence=0.9), rules=[rule("en", cond("text.language", value="en"))]),
        validate(model("reply", "Reply"), model("judge", "Judge", require="second")),
    )
    ex, _ = build(graph(flow))
    spans = list((await run(ex)).trace.spans)

    def end(s: pb.Span) -> float:
        return s.start_ms + s.latency_ms

    by_node = {s.node: s for s in spans if s.kind != "model"}
    assert {by_node[n].kind for n in ("g/main/k", "g/main/r", "g/main/r/p", "g/main/v")} == {
        "cache", "route", "parallel", "validate"}
    first = next(s for s in spans if s.node == "g/main/first")
    for parent in (by_node["g/main/k"], by_node["g/main/r/p"], by_node["g/main/v"]):
        children = [s for s in spans if s.kind == "model" and s.node.startswith(parent.node + "/")]
        assert children, parent.node
        assert parent.start_ms >= end(first)  # it started after the chain's earlier step
        for child in children:
            assert parent.start_ms <= child.start_ms and end(child) <= end(parent) + 1e-6, (parent, child)
    # A route's span is its decision (the router's call included), not the branch it chose.
    r, router = by_node["g/main/r"], next(s for s in spans if s.node == "g/main/r/rt")
    assert r.start_ms <= router.start_ms and end(router) <= end(r) + 1e-6
    assert end(r) <= by_node["g/main/r/p"].start_ms + 1e-6


async def test_on_span_streams_as_hops_finish():
    seen_during_run: list[tuple[str, int]] = []
    ex, caller = build(graph(chain(model("a", "Tag"), model("b", "Tag"), model("c", "Label"))))
    adapters = caller.adapters

    def on_span(span: pb.Span) -> None:
        seen_during_run.append((span.node, adapters["c"].calls))

    await run(ex, on_span=on_span)
    # a and b were streamed before c had even been called
    assert seen_during_run == [("g/main/a", 0), ("g/main/b", 0), ("g/main/c", 1)]


# -- the example graph ------------------------------------------------------------------------


@pytest.fixture
def demo(demo_path: pathlib.Path) -> tuple[Executor, MemoryState]:
    checked = check_graph(load_graph(demo_path))
    state = MemoryState()
    return Executor(checked, LocalCaller(checked), state=state), state


async def test_demo_routes_french_to_multilingual_model(demo):
    ex, _ = demo
    result = await run(ex, text("Je suis très content, merci pour le service excellent"))
    msg = result.message
    assert msg.text.language == "fr"
    assert msg.classification.model == "lexicon:fr"
    assert msg.classification.label == "positive"
    route_span = next(s for s in result.trace.spans if s.node == "demo/main/sentiment-cache/by-language")
    assert route_span.route == "other"
    assert "demo/main/sentiment-cache/by-language/multilingual" in nodes(result.trace)
    assert not any("/english/" in n for n in nodes(result.trace))
    assert msg.verdict.passed


async def test_demo_complaint_retries_then_passes(demo):
    ex, state = demo
    result = await run(ex, text("This is  terrible, my order arrived broken and late."))
    msg = result.message
    assert msg.text.content == "This is terrible, my order arrived broken and late."  # normalised
    assert msg.classification.label == "negative"
    assert "sorry" in msg.generation.text.lower()
    assert msg.generation.candidate == 1
    assert msg.verdict.passed
    checks = [(s.attempt, s.verdict) for s in result.trace.spans if s.node == "demo/main/reply/reply-check"]
    assert checks == [(1, "failed"), (2, "passed")]
    vspan = spans_of(result.trace, "validate")[0]
    assert (vspan.attempt, vspan.verdict) == (2, "passed")
    # one failure (+0.02) and one pass (-0.005) moved the shared escalation threshold
    assert state.values["escalation_threshold"] == pytest.approx(0.615)


async def test_demo_repeat_hits_cache(demo):
    ex, _ = demo
    first = await run(ex, text("Great service, thanks!"))
    second = await run(ex, text("Great   service, thanks!"))  # same after normalisation
    assert [s.cache_hit for s in spans_of(first.trace, "cache")] == [False]
    assert [s.cache_hit for s in spans_of(second.trace, "cache")] == [True]
    assert not any("/by-language" in n for n in nodes(second.trace))
    assert second.message.classification == first.message.classification
    assert second.message.generation == first.message.generation


async def test_demo_uncertain_message_escalates_to_ensemble(demo):
    ex, _ = demo
    result = await run(ex, text("not bad, not good"))
    conf = next(s for s in result.trace.spans if s.node.endswith("/english/confidence"))
    assert conf.route == "escalate"
    assert conf.detail == "rules[0] (escalation_threshold=0.600)"
    par = spans_of(result.trace, "parallel")[0]
    assert par.node.endswith("/confidence/ensemble")
    assert par.detail.startswith("mean:")
    assert result.message.classification.model == "mean"


async def test_demo_errors_are_typed(demo):
    ex, _ = demo
    with pytest.raises(InvalidArgument):
        await run(ex, pb.Message())
    with pytest.raises(InvalidArgument, match="must not be empty") as info:
        await run(ex, text("   "))
    assert isinstance(info.value, ModelweaveError)


# -- route change-feedback (cross-request recalibration) ---------------------------------


def _change_feedback_graph():
    from modelweave.checker import check_graph
    from modelweave.spec import parse_graph

    return check_graph(parse_graph({
        "name": "cascade",
        "flow": {"kind": "chain", "name": "main", "steps": [
            {"kind": "model", "name": "cheap", "impl": "modelweave.examples.rules:LexiconSentiment",
             "params": {"language": "en"}},
            {"kind": "route", "name": "escalate", "default": "keep",
             "rules": [{"branch": "expensive", "when": [{"field": "classification.confidence", "op": "lt",
                                                         "value_from": {"state": "t", "initial": 0.9,
                                                                        "min": 0.5, "max": 0.95}}]}],
             "branches": {"keep": None, "expensive": {
                 "kind": "model", "name": "expensive", "impl": "modelweave.examples.rules:LexiconSentiment",
                 "params": {"language": "en", "negation": True}}},
             "feedback": [{"state": "t", "on_changed": 0.02, "on_unchanged": -0.01}]},
        ]},
    }))


async def test_route_feedback_moves_threshold_on_disagreement_and_is_traced():
    from modelweave.executor import Executor
    from modelweave.local import LocalCaller

    graph = _change_feedback_graph()
    executor = Executor(graph, LocalCaller(graph), state_refresh_s=0.0)
    # "not good": the cheap lexicon says positive, the negation-aware model says negative -> changed.
    r = await executor.run(pb.Message(text=pb.Text(content="not good")))
    fb = [s for s in r.trace.spans if s.kind == "feedback"]
    assert len(fb) == 1 and "t +0.0200 -> 0.9200" in fb[0].detail and "changed" in fb[0].detail
    assert executor.feedback_values()["t"] == pytest.approx(0.92)
    # "good": both agree -> unchanged, threshold moves down.
    r = await executor.run(pb.Message(text=pb.Text(content="good")))
    assert executor.feedback_values()["t"] == pytest.approx(0.91)
    # Bounded: many disagreements cannot push it past max.
    for _ in range(10):
        await executor.run(pb.Message(text=pb.Text(content="not good")))
    assert executor.feedback_values()["t"] == pytest.approx(0.95)


def test_route_feedback_needs_a_declared_state_and_known_branches():
    from modelweave.checker import check_graph
    from modelweave.errors import GraphSpecError
    from modelweave.spec import parse_graph

    base = {"name": "g", "flow": {"kind": "route", "name": "r", "default": "a",
                                  "rules": [{"branch": "a", "when": [{"field": "text.content", "op": "exists"}]}],
                                  "branches": {"a": None},
                                  "feedback": [{"state": "nope", "on_changed": 0.1}]}}
    with pytest.raises(GraphSpecError, match="feedback\\[0\\].state 'nope'"):
        check_graph(parse_graph(base))
    base["flow"]["feedback"] = [{"state": "nope", "branches": ["zzz"]}]
    with pytest.raises(GraphSpecError, match="feedback\\[0\\].branches: 'zzz'"):
        parse_graph(base)


async def test_result_keeps_only_declared_output_parts():
    from modelweave.checker import check_graph
    from modelweave.executor import Executor
    from modelweave.local import LocalCaller
    from modelweave.spec import parse_graph

    flow = {"kind": "chain", "name": "main", "steps": [
        {"kind": "model", "name": "cheap", "impl": "modelweave.examples.rules:LexiconSentiment"},
        {"kind": "model", "name": "reply", "impl": "modelweave.examples.rules:TemplateResponder"},
    ]}
    narrow = check_graph(parse_graph({"name": "g", "output": ["Generation"], "flow": flow}))
    out = (await Executor(narrow, LocalCaller(narrow)).run(pb.Message(text=pb.Text(content="great")))).message
    assert out.HasField("generation") and not out.HasField("classification") and not out.HasField("text")
    wide = check_graph(parse_graph({"name": "g", "flow": flow}))
    out = (await Executor(wide, LocalCaller(wide)).run(pb.Message(text=pb.Text(content="great")))).message
    assert out.HasField("generation") and out.HasField("classification") and out.HasField("text")


async def test_a_model_cut_off_by_a_node_timeout_shows_in_the_error_trace():
    ex, caller = build(graph(chain(model("fast", "Tag"), {**model("slow", "Sleep", seconds=2.0), "timeout_s": 0.1})))
    with pytest.raises(DeadlineExceeded) as err:
        await run(ex)
    caller.adapters["slow"].release.set()
    slow = next(s for s in err.value.trace.spans if s.node == "g/main/slow")
    assert slow.error == "DEADLINE_EXCEEDED" and slow.detail == "cut off before the model answered"
    assert 90 <= slow.latency_ms < 1000


async def test_a_model_cut_off_by_the_request_deadline_shows_in_the_error_trace():
    ex, caller = build(graph(chain(model("fast", "Tag"), model("slow", "Sleep", seconds=2.0))))
    with pytest.raises(DeadlineExceeded) as err:
        await run(ex, timeout_s=0.15)
    caller.adapters["slow"].release.set()
    assert [(s.node, s.error) for s in err.value.trace.spans] == [
        ("g/main/fast", ""), ("g/main/slow", "DEADLINE_EXCEEDED")]


async def test_a_model_whose_request_is_cancelled_is_recorded_as_cancelled():
    ex, caller = build(graph(chain(model("slow", "Sleep", seconds=2.0))))
    spans: list[pb.Span] = []
    task = asyncio.ensure_future(ex.run(text(), on_span=spans.append))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    caller.adapters["slow"].release.set()
    assert [(s.node, s.error) for s in spans] == [("g/main/slow", "CANCELLED")]


async def test_a_failing_member_of_a_co_located_run_is_charged_its_own_time():
    def grouped(node: dict[str, Any]) -> dict[str, Any]:
        return {**node, "deployment": {"group": "prep"}}

    ex, _ = build(graph(chain(grouped(model("fast", "Sleep", seconds=0.01)),
                              grouped(model("slowfail", "Sleep", seconds=0.08, fail=True)))))
    assert ex.runs  # one call_many for both
    with pytest.raises(ModelError) as err:
        await run(ex)
    fast, slow = err.value.trace.spans
    assert (fast.node, slow.node, slow.error) == ("g/main/fast", "g/main/slowfail", "INTERNAL")
    assert 10 <= fast.latency_ms < 60 and slow.latency_ms >= 75  # not 0 ms, and not added to "fast"
    assert slow.start_ms >= fast.start_ms + fast.latency_ms - 1e-6


@pytest.mark.parametrize(("flow", "kind"), [
    (validate(model("bad", "Fail", produces="Generation", typed=True), model("judge", "Judge")), "validate"),
    (cache(model("bad", "Fail", produces="Classification", typed=True)), "cache"),
    ({"kind": "shadow", "name": "s", "primary": model("bad", "Fail", produces="Classification", typed=True),
      "candidates": [model("other", "Label")]}, "shadow"),
])
async def test_a_node_whose_child_fails_still_records_its_span(flow, kind):
    ex, _ = build(graph(flow))
    with pytest.raises(Unavailable) as err:
        await run(ex)
    spans = [s for s in err.value.trace.spans if s.kind in ("model", kind)]
    assert [(s.kind, s.error) for s in spans][:1] == [("model", "UNAVAILABLE")]
    own = next(s for s in spans if s.kind == kind)
    assert own.error == "UNAVAILABLE" and own.node.endswith(("/v", "/c", "/s"))
