"""``deployment: {inline: process}``: a model in a child process of the ingress (no Ray here).

Real child processes: the answers match the in-process adapter's, errors arrive typed, a
child that dies fails only its call and the next call gets a fresh child, a child whose
parent is killed exits, and the layout helpers place the right nodes there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from modelweave import process_isolation
from modelweave.adapters.base import build_adapter, predict_measured
from modelweave.checker import check_graph
from modelweave.codecs import message_from_text
from modelweave.errors import FailedPrecondition, GraphSpecError, InvalidArgument, ModelError, ReplicaLost
from modelweave.layout import every_model_in_the_ingress, model_node_dicts
from modelweave.local import LocalCaller
from modelweave.model_calls import predict_rows
from modelweave.process_isolation import ChildStopped, ProcessAdapter
from modelweave.spec import parse_graph

HERE = Path(__file__).parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def crashy() -> Iterator[ProcessAdapter]:
    adapter = ProcessAdapter("process_fakes:Crashy", {"busy_ms": 2.0}, name="crashy")
    adapter.load()
    yield adapter
    adapter.close()


def test_answers_match_the_in_process_adapter_and_cpu_is_the_childs(crashy: ProcessAdapter) -> None:
    batch = [message_from_text(t) for t in ("a", "b", "pid")]
    outputs, cpu_ms = predict_measured(crashy, batch)
    local = build_adapter("process_fakes:Crashy", {"busy_ms": 2.0})
    local.load()
    assert outputs[:2] == local.predict(batch)[:2]
    assert outputs[2].label == str(crashy.pid) != str(os.getpid())  # it ran in the child
    # 2 ms of the child's CPU per row; the parent only waited on the socket.
    assert 1.8 <= cpu_ms < 50.0
    assert crashy.consumes == ("Text",) and crashy.produces == "Classification" and crashy.blocking


def test_the_child_runs_at_the_nodes_cpu_priority() -> None:
    adapter = ProcessAdapter("process_fakes:Crashy", {}, name="nice", nice=7)
    adapter.load()
    try:
        assert adapter.predict([message_from_text("nice")])[0].label == str(max(7, os.nice(0)))
    finally:
        adapter.close()


def test_errors_arrive_typed_and_only_the_failing_row_fails(crashy: ProcessAdapter) -> None:
    with pytest.raises(InvalidArgument, match="text.content: 'invalid' is refused"):
        crashy.predict([message_from_text("invalid")])
    with pytest.raises(ModelError, match="model failed: ValueError: oops"):
        crashy.predict([message_from_text("oops")])
    with pytest.raises(ModelError, match="model failed: Strange: strange input"):
        crashy.predict([message_from_text("strange")])  # an error type that does not pickle
    outcomes = predict_rows(crashy, [message_from_text(t) for t in ("a", "oops", "b")])
    assert [type(o).__name__ for o in outcomes] == ["ModelReply", "ModelError", "ModelReply"]
    assert crashy.starts == 1  # errors are answers: the child lives on


def test_a_child_that_dies_fails_its_call_and_the_next_call_gets_a_new_one(crashy: ProcessAdapter) -> None:
    first = crashy.pid
    assert first is not None
    with pytest.raises(ReplicaLost, match="'crashy' died during the call .exit code 3"):
        crashy.predict([message_from_text("crash")])
    assert _wait_gone(first)
    assert crashy.predict([message_from_text("again")])[0].label == "again"
    assert crashy.starts == 2 and crashy.pid not in (None, first)


def test_an_input_that_kills_the_child_twice_is_refused_without_another_restart(crashy: ProcessAdapter) -> None:
    with pytest.raises(ReplicaLost):  # the first death may be anything (an OOM kill): retryable
        crashy.predict([message_from_text("crash")])
    with pytest.raises(ModelError, match="this input killed the process running model 'crashy' 2 times"):
        crashy.predict([message_from_text("crash")])
    starts = crashy.starts
    with pytest.raises(ModelError, match="it is not run again"):
        crashy.predict([message_from_text("crash")])
    assert crashy.starts == starts  # refused before reaching a child
    assert crashy.predict([message_from_text("fine")])[0].label == "fine"


def test_a_killed_child_is_replaced_and_rows_of_a_batch_with_a_crash_are_isolated(crashy: ProcessAdapter) -> None:
    assert crashy.pid is not None
    os.kill(crashy.pid, signal.SIGKILL)
    with pytest.raises(ReplicaLost):
        crashy.predict([message_from_text("x")])
    # A batch with a row that kills the child: the batch fails, each row is retried alone,
    # and only the crashing row fails.
    outcomes = predict_rows(crashy, [message_from_text(t) for t in ("a", "crash", "b")])
    assert [type(o).__name__ for o in outcomes] == ["ModelReply", "ReplicaLost", "ModelReply"]
    assert outcomes[0].part.label == "a" and outcomes[2].part.label == "b"


@pytest.fixture
def no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_isolation, "HANG_GRACE_S", 0.0)


def test_a_call_that_overruns_its_deadline_by_less_than_the_grace_finishes(crashy: ProcessAdapter,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_isolation, "HANG_GRACE_S", 2.0)
    slow = ProcessAdapter("process_fakes:Crashy", {"busy_ms": 400.0}, name="slow")
    slow.load()
    try:
        first = slow.pid
        (outcome,) = predict_rows(slow, [message_from_text("a")], [time.time() + 0.1])
        assert outcome.part.label == "a" and slow.pid == first  # answered late, not killed
    finally:
        slow.close()


@pytest.mark.usefixtures("no_grace")
def test_a_child_still_working_when_its_callers_gave_up_is_stopped(crashy: ProcessAdapter) -> None:
    first = crashy.pid
    assert first is not None
    start = time.monotonic()
    (outcome,) = predict_rows(crashy, [message_from_text("hang")], [time.time() + 0.3])
    assert isinstance(outcome, ChildStopped) and outcome.status.value == "DEADLINE_EXCEEDED"
    assert time.monotonic() - start < 5.0  # not the two minutes the input would take
    assert _wait_gone(first)
    # The next call gets a fresh child at once instead of waiting behind the stuck input.
    assert crashy.predict([message_from_text("fine")])[0].label == "fine" and crashy.pid != first


@pytest.mark.usefixtures("no_grace")
def test_a_batch_waits_for_its_latest_deadline(crashy: ProcessAdapter) -> None:
    start = time.monotonic()
    outcomes = predict_rows(crashy, [message_from_text("hang"), message_from_text("x")],
                            [time.time() + 0.2, time.time() + 0.8])
    waited = time.monotonic() - start
    # Stopped when the later caller gave up; neither row is then run alone (both deadlines passed).
    assert 0.7 < waited < 5.0
    assert [type(o).__name__ for o in outcomes] == ["DeadlineExceeded", "DeadlineExceeded"]
    assert crashy.predict([message_from_text("y")])[0].label == "y"


@pytest.mark.usefixtures("no_grace")
def test_an_input_that_hangs_the_child_twice_is_refused(crashy: ProcessAdapter) -> None:
    for _ in range(2):
        predict_rows(crashy, [message_from_text("hang")], [time.time() + 0.2])
    starts = crashy.starts
    (outcome,) = predict_rows(crashy, [message_from_text("hang")], [time.time() + 0.2])
    assert isinstance(outcome, ModelError) and "2 times" in str(outcome)
    assert crashy.starts == starts


def test_a_model_that_cannot_load_is_a_failed_precondition_and_leaves_no_process() -> None:
    adapter = ProcessAdapter("process_fakes:NoLoad", {}, name="noload")
    with pytest.raises(FailedPrecondition, match="'noload' failed to load.*FileNotFoundError: weights.bin is missing"):
        adapter.load()
    assert adapter.pid is None


def test_bad_params_are_refused_before_any_process_starts() -> None:
    with pytest.raises(GraphSpecError, match="params.busy_ms"):
        ProcessAdapter("process_fakes:Crashy", {"busy_ms": "slow"})


def test_close_stops_the_child(crashy: ProcessAdapter) -> None:
    pid = crashy.pid
    assert pid is not None
    crashy.close()
    assert _wait_gone(pid) and crashy.pid is None


def test_the_child_exits_when_its_parent_is_killed() -> None:
    # A parent that starts a child and is then SIGKILLed (as Ray kills a replica) runs no
    # clean-up of its own; the child must notice and exit by itself.
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(HERE)!r})
        from modelweave.process_isolation import ProcessAdapter
        a = ProcessAdapter("process_fakes:Crashy", {{}})
        a.load()
        print(a.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.kill()
        parent.wait()
        assert _wait_gone(child), "the child outlived its killed parent"
    finally:
        parent.kill()
        parent.wait()


GRAPH = """
name: isolated
input: [Text]
output: [Text, Classification]
flow:
  kind: chain
  name: main
  steps:
    - kind: model
      name: classify
      impl: process_fakes:Crashy
      deployment: {inline: process, batching: {max_batch_size: 4, batch_wait_timeout_s: 0}}
"""


def test_the_ingress_caller_runs_process_nodes_in_a_child_and_evaluation_runs_them_here() -> None:
    graph = check_graph(parse_graph(yaml.safe_load(GRAPH), "isolated"))
    assert graph.layout.home["classify"] is None  # inside the ingress: no deployment of its own
    assert graph.layout.placement("classify") == "in ingress, own process"
    serving = LocalCaller(graph, serving=True)
    adapter = serving.adapters["classify"]
    try:
        assert isinstance(adapter, ProcessAdapter)
        assert adapter.nice == graph.models["classify"].deployment.nice == 5  # the default, as a replica's
        node = graph.models["classify"]

        async def calls() -> list[str]:
            replies = await asyncio.gather(*(serving.call(node, message_from_text(t)) for t in ("pid", "b", "c")))
            return [r.part.label for r in replies]

        labels = asyncio.run(calls())
        assert labels[0] == str(adapter.pid) and labels[1:] == ["b", "c"]
    finally:
        adapter.close()
    local = LocalCaller(graph)  # evaluation and tests: loaded in this process
    assert not isinstance(local.adapters["classify"], ProcessAdapter)


def test_calls_to_a_child_without_batching_queue_on_the_event_loop_one_at_a_time() -> None:
    data = yaml.safe_load(GRAPH)
    data["flow"]["steps"][0]["deployment"] = {"inline": "process"}
    graph = check_graph(parse_graph(data, "isolated"))
    serving = LocalCaller(graph, serving=True)
    try:
        batcher = serving.batchers["classify"]  # not one worker thread per waiting call
        assert batcher.max_batch_size == 1

        async def calls() -> list[str]:
            node = graph.models["classify"]
            replies = await asyncio.gather(*(serving.call(node, message_from_text(f"t{i}")) for i in range(6)))
            return [r.part.label for r in replies]

        assert asyncio.run(calls()) == [f"t{i}" for i in range(6)]
        assert batcher.batch_sizes == [1] * 6
    finally:
        serving.adapters["classify"].close()


def test_a_process_node_cannot_also_be_in_a_group() -> None:
    data = yaml.safe_load(GRAPH)
    data["flow"]["steps"][0]["deployment"] = {"inline": "process", "group": "prep"}
    with pytest.raises(GraphSpecError, match="deployment.inline: process contradicts deployment.group 'prep'"):
        check_graph(parse_graph(data, "isolated"))


def test_isolate_places_the_deployed_blocking_models_in_child_processes() -> None:
    data = yaml.safe_load(GRAPH)
    steps = data["flow"]["steps"]
    steps[0]["deployment"] = {"num_replicas": 2, "nice": 9,
                              "batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0}}
    steps.append({"kind": "model", "name": "rule", "impl": "fakes:Label", "params": {"label": "x"},
                  "deployment": {"num_replicas": 2}})  # non-blocking glue with a deployment of its own
    steps.append({"kind": "model", "name": "inline-rule", "impl": "fakes:Tag", "params": {"suffix": "!"}})
    assert set(check_graph(parse_graph(data, "isolated")).layout.deployments) == {"classify", "rule"}
    out = every_model_in_the_ingress(data, 2, isolate=True)
    settings = {n["name"]: n["deployment"] for n in model_node_dicts(out["flow"])}
    assert settings == {"classify": {"inline": "process", "nice": 9,
                                     "batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0}},
                        "rule": {"inline": True}, "inline-rule": {"inline": True}}
    assert out["ingress"]["num_replicas"] == 2
    assert check_graph(parse_graph(out, "isolated")).layout.deployments == {}  # no Serve hop left
