"""The batch stage's columnar runner against the row-by-row executor: same answers, same traces.

Each graph runs twice over the same rows: row by row (the executor, one row after another)
and columnar (all rows in one batch). Every row must end the same way: the same output
message or the same typed error, and the same spans in the same order (timings aside).
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from fakes import build, graph, model, text

from modelweave.batch.columnar import ColumnarRunner, row_by_row_parts
from modelweave.checker import check_graph
from modelweave.errors import DeadlineExceeded, ModelweaveError, ReplicaLost
from modelweave.executor import Executor, ModelReply, Result
from modelweave.local import LocalCaller
from modelweave.spec import ModelNode, load_graph, parse_graph
from modelweave.v1 import messages_pb2 as pb

pytestmark = pytest.mark.timeout(30)


def fake(name: str, adapter: str, **params: Any) -> dict[str, Any]:
    node: dict[str, Any] = {"kind": "model", "name": name, "impl": f"columnar_fakes:{adapter}"}
    if params:
        node["params"] = params
    return node


def chain(*steps: dict[str, Any], name: str = "main") -> dict[str, Any]:
    return {"kind": "chain", "name": name, "steps": list(steps)}


def check_reply(name: str = "check", **extra: Any) -> dict[str, Any]:
    return {"kind": "validate", "name": name, "target": fake("echo", "Echo"),
            "validator": fake("second", "PassOnSecond"), "max_attempts": 2, **extra}


def low_confidence_route() -> dict[str, Any]:
    return {"kind": "route", "name": "by-confidence", "default": "high",
            "rules": [{"branch": "low", "when": [{"field": "classification.confidence", "op": "lt", "value": 0.5}]}],
            "branches": {"low": fake("echo", "Echo"), "high": None}}


GRAPHS: dict[str, dict[str, Any]] = {
    "failing rows": chain(fake("first", "FailOn"), fake("echo", "Echo")),
    "typed failures": chain(fake("first", "FailOn", typed=True), fake("echo", "Echo")),
    "fallback": chain({**fake("first", "FailOn"), "fallback": fake("spare", "FailOn", marker="zzz", label="spare")},
                      fake("echo", "Echo")),
    "route with a pass-through branch": chain(fake("first", "FailOn"), low_confidence_route()),
    "a model answering the wrong count": chain(model("many", "TooMany")),
    "a model answering the wrong part type": chain(model("wrong", "WrongPart")),
    "a blocking model": chain(model("slow", "Sleep", seconds=0.0), fake("echo", "Echo")),
    "a shadow node": chain({"kind": "shadow", "name": "s", "primary": fake("first", "FailOn"),
                            "candidates": [fake("other", "FailOn", marker="zzz")]}, fake("echo", "Echo")),
    "a node with its own timeout": chain({**fake("first", "FailOn"), "timeout_s": 5.0}, fake("echo", "Echo")),
    "a speculative cache": chain({"kind": "cache", "name": "c", "speculate": True,
                                  "body": chain(fake("first", "FailOn"), fake("echo", "Echo"), name="body")}),
    "sticky split": chain(fake("first", "FailOn"), {
        "kind": "split", "name": "ab", "sticky": "text.content", "weights": {"a": 1, "b": 1},
        "branches": {"a": fake("echo", "Echo"), "b": None}}),
    "router label": chain({"kind": "route", "name": "by-label", "default": "other",
                           "router": fake("router", "FailOn", marker="zzz"),
                           "branches": {"late": fake("echo", "Echo"), "other": None}}),
    "validate, degraded when exhausted": chain(fake("first", "FailOn"), check_reply()),
    "validate, escalate": chain(fake("first", "FailOn"),
                                check_reply(on_failure="escalate", escalate=model("human", "Gen", text="human"))),
    "validate, retry then escalate": chain(fake("first", "FailOn"),
                                           check_reply(escalate=model("human", "Gen", text="human"))),
    "validate, error when exhausted": chain(fake("first", "FailOn"), check_reply(on_exhausted="error")),
    "parallel vote, one branch may fail": chain({
        "kind": "parallel", "name": "vote", "aggregate": {"strategy": "vote", "min_successful": 2},
        "branches": [fake("a", "FailOn", marker="zzz", label="a"), fake("b", "FailOn", label="b"),
                     fake("c", "FailOn", marker="zzz", label="b")]}),
    "parallel mean, every branch needed": chain({
        "kind": "parallel", "name": "mean", "aggregate": {"strategy": "mean"},
        "branches": [fake("a", "FailOn", marker="zzz", label="a"), fake("b", "FailOn")]}),
    "validate whose target fails on some rows": chain(
        {"kind": "validate", "name": "check", "max_attempts": 2, "validator": fake("second", "PassOnSecond"),
         "target": chain(fake("first", "FailOn"), fake("echo", "Echo"), name="answer")}),
    "validate whose escalation fails on some rows": chain(
        fake("first", "FailOn", marker="zzz"),
        {"kind": "validate", "name": "check", "on_failure": "escalate", "target": fake("echo", "Echo"),
         "validator": fake("second", "PassOnSecond"), "escalate": fake("human", "FailOn")}),
    "cache whose body fails on some rows": chain(
        {"kind": "cache", "name": "c", "body": fake("first", "FailOn")}, fake("echo", "Echo")),
    "cache around failing and degraded rows": chain(
        {"kind": "cache", "name": "c", "body": chain(fake("first", "FailOn"), check_reply(), name="body")},
        fake("after", "FailOn", marker="zzz", label="after")),
}


def rows(n: int = 60, seed: int = 3) -> list[pb.Message]:
    rng = random.Random(seed)
    pool = ["late parcel again", "late", "great service, thanks a lot for the quick help", "boom goes the app",
            "never mind the boom", "late and broken, I want a refund now please", "ok", "never happy with it"]
    return [text(rng.choice(pool)) for _ in range(n)]  # repeats: cache keys shared within the batch


def timeless(trace: pb.Trace) -> list[bytes]:
    out = []
    for span in trace.spans:
        copy = pb.Span()
        copy.CopyFrom(span)
        copy.ClearField("start_ms")
        copy.ClearField("latency_ms")
        copy.ClearField("cpu_ms")
        out.append(copy.SerializeToString(deterministic=True))
    return out


def ending(outcome: Result | BaseException) -> tuple[Any, ...]:
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, ModelweaveError), repr(outcome)
        trace = outcome.trace if isinstance(outcome.trace, pb.Trace) else pb.Trace()
        return ("error", outcome.status.value, str(outcome), outcome.node, timeless(trace))
    return ("ok", outcome.message.SerializeToString(deterministic=True), timeless(outcome.trace))


async def row_by_row(ex: Executor, messages: list[pb.Message], *, at_once: bool = False,
                     ) -> list[Result | BaseException]:
    if at_once:  # as a row-by-row stage runs a batch: every row in flight together
        return list(await asyncio.gather(*(ex.run(m) for m in messages), return_exceptions=True))
    outcomes: list[Result | BaseException] = []
    for message in messages:
        try:
            outcomes.append(await ex.run(message))
        except ModelweaveError as exc:
            outcomes.append(exc)
    return outcomes


async def both(data: dict[str, Any], messages: list[pb.Message], *, at_once: bool = False,
               ) -> tuple[list[Any], list[Any]]:
    reference, _ = build(data)
    expected = [ending(o) for o in await row_by_row(reference, messages, at_once=at_once)]
    ex, _ = build(data)
    got = [ending(o) for o in await ColumnarRunner(ex).run(messages)]
    return expected, got


@pytest.mark.parametrize("name", sorted(GRAPHS))
async def test_every_row_ends_as_row_by_row(name: str) -> None:
    # A speculative cache runs row by row inside the columnar walk, all rows at once: repeats in a
    # batch miss together, as in a row-by-row stage (the reference one row after another hits).
    expected, got = await both(graph(GRAPHS[name]), rows(), at_once="speculative" in name)
    if name.startswith("parallel"):  # branches' spans come in the order the branches end, row by row too
        expected, got = ([(*e[:-1], sorted(e[-1])) for e in side] for side in (expected, got))
    assert [e[:2] for e in got] == [e[:2] for e in expected]  # first the outcome, for a readable diff
    assert got == expected


async def test_the_graphs_cover_failures_fallbacks_escalations_and_cache_hits() -> None:
    """The parity above means something only if the rows take every path."""
    seen: set[str] = set()
    for flow in GRAPHS.values():
        ex, _ = build(graph(flow))
        for outcome in await ColumnarRunner(ex).run(rows()):
            if isinstance(outcome, BaseException):
                seen.add(f"error {outcome.status.value}")
                continue
            for span in outcome.trace.spans:
                seen.add(span.kind + (" hit" if span.cache_hit else "") + (f" {span.route}" if span.route else "")
                         + (" error" if span.error else ""))
    assert {"error INTERNAL", "error INVALID_ARGUMENT", "error FAILED_PRECONDITION", "fallback error",
            "cache hit", "cache", "route low", "route high", "validate escalate", "parallel", "model error",
            "split a", "split b"} <= seen


async def test_the_demo_graph_runs_as_row_by_row(demo_path: Path) -> None:
    data = load_graph(demo_path).model_dump(mode="json")
    for step in data["flow"]["steps"]:
        if step["name"] == "reply":
            step["feedback"] = []  # row by row, feedback moves the threshold between rows; columnar per batch
    texts = ["I love this, great and fast service", "the parcel is broken and late, I want a refund",
             "where is my order", "not good at all, really disappointed", "Le colis est arrivé en retard",
             "El producto es muy bueno, gracias", "good but late", ""]
    messages = [text(t) for t in texts * 6]
    expected, got = await both(data, messages)
    assert got == expected
    assert sum(1 for e in expected if e[0] == "error") == 6  # the empty texts, refused by name


async def test_one_model_call_per_node_for_the_whole_batch() -> None:
    ex, caller = build(graph(chain(fake("first", "FailOn"), fake("echo", "Echo"))))
    messages = [text(f"row {i}") for i in range(50)]
    outcomes = await ColumnarRunner(ex).run(messages)
    assert all(isinstance(o, Result) for o in outcomes)
    assert caller.adapters["first"].batches == [50]  # type: ignore[attr-defined]


async def test_a_failing_row_fails_alone_when_its_batch_call_fails() -> None:
    ex, caller = build(graph(chain(fake("first", "FailOn"), fake("echo", "Echo"))))
    messages = [text("fine"), text("boom"), text("fine too")]
    outcomes = await ColumnarRunner(ex).run(messages)
    assert [type(o).__name__ for o in outcomes] == ["Result", "ModelError", "Result"]
    assert caller.adapters["first"].batches == [3, 1, 1, 1]  # type: ignore[attr-defined]


async def test_feedback_moves_once_per_attempt() -> None:
    gate = {"kind": "route", "name": "gate", "default": "go", "branches": {"go": None},
            "rules": [{"branch": "go", "when": [{"field": "classification.confidence", "op": "lt",
                                                 "value_from": {"state": "t", "initial": 0.5, "min": 0, "max": 1}}]}]}
    ex, _ = build(graph(chain(fake("first", "FailOn", marker="zzz"), gate, check_reply(
        feedback=[{"state": "t", "on_fail": 0.01, "on_pass": -0.001}]))))
    before = await ex.state.get(ex.graph.states["t"])
    await ColumnarRunner(ex).run([text("a"), text("b"), text("c")])
    # Every row fails its first attempt and passes its second: +0.01 and -0.001 three times each.
    assert await ex.state.get(ex.graph.states["t"]) == pytest.approx(before + 3 * (0.01 - 0.001))


class LosesFirstCalls:
    """A caller whose first ``failures`` calls of every row raise ``ReplicaLost``."""

    def __init__(self, inner: LocalCaller, failures: int) -> None:
        self.inner, self.failures = inner, failures
        self.tries: dict[str, int] = {}

    async def call(self, model_node: ModelNode, message: pb.Message) -> ModelReply:
        key = message.text.content
        self.tries[key] = self.tries.get(key, 0) + 1
        if self.tries[key] <= self.failures:
            raise ReplicaLost(f"model {model_node.name!r} is unavailable: ActorDiedError")
        return await self.inner.call(model_node, message)


async def test_a_lost_replica_is_retried_for_the_rows_it_lost() -> None:
    ex, inner = build(graph(chain(fake("first", "FailOn"))))
    lossy = Executor(ex.graph, LosesFirstCalls(inner, failures=1))
    outcomes = await ColumnarRunner(lossy).run([text("one"), text("two")])
    for outcome in outcomes:
        assert isinstance(outcome, Result)
        assert [(s.retry, s.error) for s in outcome.trace.spans] == [(0, "UNAVAILABLE"), (1, "")]


async def test_a_row_that_is_not_retried_fails_with_replica_lost() -> None:
    flow = chain({**fake("first", "FailOn"), "idempotent": False})
    ex, inner = build(graph(flow))
    outcomes = await ColumnarRunner(Executor(ex.graph, LosesFirstCalls(inner, failures=1))).run([text("one")])
    assert isinstance(outcomes[0], ReplicaLost)


async def test_the_batch_deadline_fails_every_unfinished_row() -> None:
    ex, caller = build(graph(chain(model("slow", "Sleep", seconds=2.0))))
    outcomes = await ColumnarRunner(ex).run([text("a"), text("b")], timeout_s=0.1)
    caller.adapters["slow"].release.set()  # type: ignore[attr-defined]
    assert all(isinstance(o, DeadlineExceeded) and "request deadline of 100 ms" in str(o) for o in outcomes)


async def test_a_row_that_failed_before_the_deadline_keeps_its_own_error() -> None:
    ex, caller = build(graph(chain(fake("first", "FailOn"), model("slow", "Sleep", seconds=2.0))))
    outcomes = await ColumnarRunner(ex).run([text("boom here"), text("b")], timeout_s=0.2)
    caller.adapters["slow"].release.set()  # type: ignore[attr-defined]
    # Row by row, "boom here" fails in its first step, long before the deadline: the same here.
    assert isinstance(outcomes[0], ModelweaveError) and not isinstance(outcomes[0], DeadlineExceeded)
    assert "boom" in str(outcomes[0]) and outcomes[0].trace.spans[-1].error
    assert isinstance(outcomes[1], DeadlineExceeded)


async def test_a_row_without_the_input_part_is_refused_by_name() -> None:
    ex, _ = build(graph(chain(fake("first", "FailOn"))))
    outcomes = await ColumnarRunner(ex).run([pb.Message(), text("fine")])
    assert isinstance(outcomes[0], ModelweaveError) and "input.text" in str(outcomes[0])
    assert isinstance(outcomes[1], Result)


def test_the_nodes_it_hands_to_the_executor_are_named(demo_path: Path) -> None:
    assert row_by_row_parts(check_graph(load_graph(demo_path))) == []
    shadow = check_graph(parse_graph(graph(GRAPHS["a shadow node"])))
    assert row_by_row_parts(shadow) == ["g/main/s (a shadow node)"]  # its children are inside it
    timed = check_graph(parse_graph(graph(GRAPHS["a node with its own timeout"])))
    assert row_by_row_parts(timed) == ["g/main/first (timeout_s)"]
    cached = check_graph(parse_graph(graph(GRAPHS["a speculative cache"])))
    assert row_by_row_parts(cached) == ["g/main/c (a semantic or speculative cache)"]


def test_a_caller_with_co_located_runs_is_refused() -> None:
    data = graph(chain(fake("first", "FailOn"), fake("echo", "Echo")))
    for step in data["flow"]["steps"]:
        step["deployment"] = {"group": "prep"}
    ex, _ = build(data)
    assert ex.runs  # LocalCaller serves a group's run in one call, as a group replica does
    with pytest.raises(ValueError, match="co-located"):
        ColumnarRunner(ex)


async def test_rows_of_two_batches_share_the_cache() -> None:
    ex, caller = build(graph(chain({"kind": "cache", "name": "c", "body": fake("first", "FailOn")})))
    runner = ColumnarRunner(ex)
    await runner.run([text("same"), text("same"), text("other")])
    second = await runner.run([text("same")])
    assert isinstance(second[0], Result) and second[0].trace.spans[0].cache_hit
    assert caller.adapters["first"].batches == [2]  # type: ignore[attr-defined]
    await asyncio.sleep(0)
