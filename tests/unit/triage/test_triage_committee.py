"""Committee disagreement aggregate: keeps the cheap label, lowers its confidence on disagreement."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelweave.aggregate import aggregate
from modelweave.apps.triage.committee import CommitteeDisagreement, tfidf_vader
from modelweave.checker import check_graph
from modelweave.spec import AggregateSpec, load_graph
from modelweave.v1 import messages_pb2 as pb

REPO = Path(__file__).resolve().parents[3]


def _msg(label: str, confidence: float, model: str) -> pb.Message:
    scores = [
        pb.LabelScore(label=name, score=confidence if name == label else (1 - confidence) / 2)
        for name in ("negative", "neutral", "positive")
    ]
    return pb.Message(classification=pb.Classification(label=label, confidence=confidence, scores=scores, model=model))


def test_agreement_keeps_the_first_classification() -> None:
    out = CommitteeDisagreement(0.1)([_msg("positive", 0.7, "tfidf-lr"), _msg("positive", 0.9, "vader")])
    assert (out.label, out.confidence, out.model) == ("positive", pytest.approx(0.7), "tfidf-lr+committee")
    assert {s.label: s.score for s in out.scores}["positive"] == pytest.approx(0.7)


def test_disagreement_lowers_confidence_but_keeps_label_and_scores() -> None:
    first = _msg("negative", 0.7, "tfidf-lr")
    out = CommitteeDisagreement(0.1)([first, _msg("neutral", 0.9, "vader")])
    assert (out.label, out.confidence) == ("negative", pytest.approx(0.6))
    assert out.model == "tfidf-lr+committee:disagree"
    assert list(out.scores) == list(first.classification.scores)  # scores untouched
    assert CommitteeDisagreement(0.9)([_msg("negative", 0.5, ""), _msg("neutral", 0.9, "")]).confidence == 0.0
    assert tfidf_vader.penalty == pytest.approx(0.05)


def test_a_single_result_and_bad_input() -> None:
    assert CommitteeDisagreement(0.2)([_msg("neutral", 0.5, "x")]).confidence == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no branch result"):
        CommitteeDisagreement(0.2)([])
    with pytest.raises(ValueError, match="penalty"):
        CommitteeDisagreement(1.5)


def test_it_runs_as_a_custom_parallel_aggregate() -> None:
    spec = AggregateSpec(
        strategy="custom", function="modelweave.apps.triage.committee:tfidf_vader", produces="Classification"
    )
    base = pb.Message(text=pb.Text(content="late again"))
    out, detail = aggregate(
        spec, base, [_msg("negative", 0.66, "tfidf-lr"), _msg("positive", 0.8, "vader")], [1.0, 1.0]
    )
    assert out.text.content == "late again" and detail.startswith("custom")
    assert out.classification.label == "negative"
    assert out.classification.confidence == pytest.approx(0.61)  # below the graph's 0.63: escalated


def test_the_graph_file_type_checks() -> None:
    graph = check_graph(load_graph(REPO / "examples" / "evolution" / "7-disagreement.yaml"))
    assert {"tfidf", "vader", "minilm", "tfidf-second-opinion"} <= set(graph.models)
