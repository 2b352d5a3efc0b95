"""KeepPart: an earlier node's part handed on as a branch's output, checked like any model."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes import graph, model

from modelweave.adapters.parts import KeepPart
from modelweave.checker import check_graph
from modelweave.errors import FailedPrecondition, GraphSpecError
from modelweave.executor import Executor
from modelweave.local import LocalCaller
from modelweave.spec import parse_graph
from modelweave.v1 import messages_pb2 as pb

KEEP = "modelweave.adapters.parts:KeepPart"
NEG = {"negative": 0.7, "positive": 0.3}
POS = {"negative": 0.4, "positive": 0.6}


def keep(name: str, **params: Any) -> dict[str, Any]:
    node: dict[str, Any] = {"kind": "model", "name": name, "impl": KEEP}
    if params:
        node["params"] = params
    return node


def test_signature_follows_the_part() -> None:
    assert KeepPart.signature({}) == (("Classification",), "Classification")
    assert KeepPart.signature({"part": "modelweave.v1.Text"}) == (("Text",), "Text")
    assert not KeepPart.blocking


@pytest.mark.parametrize(("params", "message"), [
    ({"part": "Image"}, "KeepPart: params.part: .*unknown message type 'Image'"),
    ({"part": "Tensor"}, "KeepPart: params.part: .*Tensor parts are a map"),
    ({"part": "Text", "extra": 1}, "params.extra"),
])
def test_bad_params_are_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(GraphSpecError, match=message):
        KeepPart.validate_params(params)


def test_hands_on_a_copy_of_the_part() -> None:
    adapter = KeepPart(part="Classification")
    cls = pb.Classification(label="negative", confidence=0.7,
                            scores=[pb.LabelScore(label="negative", score=0.7)], model="tfidf")
    envelope = pb.Message(text=pb.Text(content="hi"), classification=cls)
    (out,) = adapter.predict([envelope])
    assert out == cls
    out.label = "changed"  # a copy: the envelope's part is not shared
    assert envelope.classification.label == "negative"
    with pytest.raises(FailedPrecondition, match="no Classification to keep"):
        adapter.predict([pb.Message(text=pb.Text(content="hi"))])


def test_the_checker_refuses_it_where_no_earlier_node_wrote_the_part() -> None:
    with pytest.raises(GraphSpecError, match="missing {modelweave.v1.Classification}"):
        check_graph(parse_graph(graph({"kind": "chain", "name": "main", "steps": [keep("vote")]})))


def test_an_ensemble_vote_equals_running_the_cheap_model_again() -> None:
    # The triage shape: a cheap classifier, then a parallel node whose second voice was the same
    # classifier on the same text. Handing its answer on gives the same aggregate.
    def flow(second: dict[str, Any]) -> dict[str, Any]:
        return graph({"kind": "chain", "name": "main", "steps": [
            model("cheap", "Label", label="negative", confidence=0.7, scores=NEG),
            {"kind": "parallel", "name": "ensemble", "aggregate": {"strategy": "mean", "weights": [0.4, 0.6]},
             "branches": [model("expensive", "Label", label="positive", confidence=0.6, scores=POS), second]},
        ]}, output=["Classification"])

    results = []
    for second in (model("again", "Label", label="negative", confidence=0.7, scores=NEG), keep("again")):
        checked = check_graph(parse_graph(flow(second)))
        executor = Executor(checked, LocalCaller(checked))
        result = asyncio.run(executor.run(pb.Message(text=pb.Text(content="hello"))))
        results.append(result.message.classification)
    assert results[0] == results[1]
    assert results[0].label == "negative" and results[0].confidence == pytest.approx(0.4 * 0.4 + 0.6 * 0.7)
