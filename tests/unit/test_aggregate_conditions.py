"""Aggregation strategies and route conditions, tested directly."""

from __future__ import annotations

from typing import Any

import pytest

from modelweave.aggregate import aggregate
from modelweave.conditions import evaluate, read_field
from modelweave.errors import ModelError
from modelweave.spec import AggregateSpec, Condition
from modelweave.v1 import messages_pb2 as pb


def cls_msg(label: str, confidence: float = 0.9, **scores: float) -> pb.Message:
    return pb.Message(classification=pb.Classification(
        label=label, confidence=confidence, scores=[pb.LabelScore(label=k, score=v) for k, v in scores.items()]))


def gen_msg(text: str, source: str = "", score: float = 0.0, verdict: bool | None = None) -> pb.Message:
    m = pb.Message(generation=pb.Generation(text=text, source=source, score=score))
    if verdict is not None:
        m.verdict.passed = verdict
    return m


BASE = pb.Message(text=pb.Text(content="input", language="en"), metadata={"k": "v"})


# -- aggregate -------------------------------------------------------------------------------


def test_vote_skips_failed_branches_and_keeps_weights_aligned():
    spec = AggregateSpec(strategy="vote")
    results = [cls_msg("a"), None, cls_msg("b")]
    out, detail = aggregate(spec, BASE, results, [1.0, 100.0, 2.0])  # the failed branch's weight is ignored
    assert out.classification.label == "b"
    assert out.classification.confidence == pytest.approx(2 / 3)
    assert detail == "vote: b (0.67)"


def test_vote_output_keeps_base_and_does_not_modify_it():
    before = BASE.SerializeToString(deterministic=True)
    out, _ = aggregate(AggregateSpec(strategy="vote"), BASE, [cls_msg("a"), cls_msg("a")], [1.0, 1.0])
    assert out.text.content == "input" and out.metadata["k"] == "v"
    assert BASE.SerializeToString(deterministic=True) == before
    assert out is not BASE


def test_vote_tie_broken_by_confidence():
    out, _ = aggregate(AggregateSpec(strategy="vote"), BASE, [cls_msg("a", 0.4), cls_msg("b", 0.5)], [1.0, 1.0])
    assert out.classification.label == "b"
    out, _ = aggregate(AggregateSpec(strategy="vote"), BASE, [cls_msg("a", 0.6), cls_msg("b", 0.5)], [1.0, 1.0])
    assert out.classification.label == "a"


def test_mean_weights_only_successful_branches():
    results = [cls_msg("x", x=0.9, y=0.1), None, cls_msg("y", x=0.3, y=0.7)]
    out, detail = aggregate(AggregateSpec(strategy="mean"), BASE, results, [1.0, 5.0, 1.0])
    c = out.classification
    assert c.label == "x"
    assert c.confidence == pytest.approx(0.6)
    assert {s.label: round(s.score, 6) for s in c.scores} == {"x": 0.6, "y": 0.4}
    assert detail == "mean: x (0.60)"


def test_mean_merges_disjoint_label_sets():
    out, _ = aggregate(AggregateSpec(strategy="mean"), BASE, [cls_msg("a", 0.8), cls_msg("b", 0.4)], [1.0, 1.0])
    assert out.classification.label == "a"
    assert out.classification.confidence == pytest.approx(0.4)
    assert sorted(s.label for s in out.classification.scores) == ["a", "b"]


def test_concat_skips_failed_and_empty():
    spec = AggregateSpec(strategy="concat", separator="/")
    results = [gen_msg("one", "s1", 0.7), None, gen_msg("", "", 0.9), gen_msg("two", "s2", 0.8)]
    out, detail = aggregate(spec, BASE, results, [1.0] * 4)
    assert out.generation.text == "one/two"
    assert out.generation.source == "s1,s2"
    assert out.generation.score == pytest.approx(0.7)
    assert detail == "concat: 3 parts"


def test_first_valid_returns_a_whole_branch():
    results = [None, gen_msg("bad", verdict=False), gen_msg("good", verdict=True), gen_msg("later")]
    out, detail = aggregate(AggregateSpec(strategy="first_valid"), BASE, results, [1.0] * 4)
    assert out.generation.text == "good"
    assert not out.HasField("text")  # the branch's envelope, not the base
    assert detail == "first_valid: branch 2"
    assert out is not results[2]


def test_first_valid_none_valid():
    with pytest.raises(ModelError, match="no branch produced a valid result"):
        aggregate(AggregateSpec(strategy="first_valid"), BASE, [None, gen_msg("x", verdict=False)], [1.0, 1.0])


def test_custom_gets_only_successful_results():
    spec = AggregateSpec(strategy="custom", function="fakes:longest", produces="Generation")
    out, detail = aggregate(spec, BASE, [gen_msg("ab"), None, gen_msg("abcd")], [1.0] * 3)
    assert out.generation.text == "abcd"
    assert out.generation.source == "longest-of-2"
    assert out.text.content == "input"
    assert detail == "custom: fakes:longest"


def test_custom_errors_are_typed():
    spec = AggregateSpec(strategy="custom", function="fakes:broken_aggregate", produces="Generation")
    with pytest.raises(ModelError, match="aggregate function fakes:broken_aggregate failed: ValueError"):
        aggregate(spec, BASE, [gen_msg("a"), gen_msg("b")], [1.0, 1.0])
    spec = AggregateSpec(strategy="custom", function="fakes:wrong_aggregate", produces="modelweave.v1.Generation")
    with pytest.raises(ModelError, match="returned modelweave.v1.Text, declared Generation"):
        aggregate(spec, BASE, [gen_msg("a"), gen_msg("b")], [1.0, 1.0])


# -- read_field ------------------------------------------------------------------------------


MSG = pb.Message(
    text=pb.Text(content="Hello there", language="en", language_score=0.75),
    classification=pb.Classification(label="pos", confidence=0.25),
    tensors={"emb": pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2, 3])},
    metadata={"tier": "gold", "empty": ""},
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("text.language", "en"),
        ("text.content", "Hello there"),
        ("classification.label", "pos"),
        ("metadata.tier", "gold"),
        ("metadata.missing", None),
        ("generation.text", None),  # absent part
        ("tensors.emb.dtype", pb.DTYPE_FLOAT32),
        ("tensors.nope.dtype", None),
        ("text.no_such_field", None),
    ],
)
def test_read_field(path, expected):
    assert read_field(MSG, path) == expected


def test_read_field_whole_part_and_repeated():
    assert read_field(MSG, "text").language == "en"
    assert list(read_field(MSG, "tensors.emb.shape")) == [2, 3]
    assert read_field(MSG, "text.language_score") == pytest.approx(0.75)


# -- evaluate --------------------------------------------------------------------------------


def c(field: str, op: str, value: Any = None, **extra: Any) -> Condition:
    return Condition(field=field, op=op, value=value, **extra)


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        (c("text.language", "eq", "en"), True),
        (c("text.language", "eq", "fr"), False),
        (c("text.language", "ne", "fr"), True),
        (c("text.language", "ne", "en"), False),
        (c("text.language", "in", ["fr", "en"]), True),
        (c("text.language", "in", ["fr", "de"]), False),
        (c("text.language", "not_in", ["fr", "de"]), True),
        (c("text.language", "not_in", ["en"]), False),
        (c("text.content", "matches", r"^Hel+o\b"), True),
        (c("text.content", "matches", r"^there"), False),
        (c("classification.confidence", "lt", 0.3), True),
        (c("classification.confidence", "lt", 0.25), False),
        (c("classification.confidence", "le", 0.25), True),
        (c("classification.confidence", "gt", 0.2), True),
        (c("classification.confidence", "gt", 0.25), False),
        (c("classification.confidence", "ge", 0.25), True),
        (c("classification.confidence", "ge", 0.26), False),
        (c("metadata.tier", "eq", "gold"), True),
        (c("tensors.emb.dtype", "eq", pb.DTYPE_FLOAT32), True),
    ],
)
def test_operators(cond, expected):
    assert evaluate(cond, MSG) is expected


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        (c("metadata.tier", "exists"), True),
        (c("metadata.missing", "exists"), False),
        (c("metadata.empty", "exists"), False),
        (c("generation", "exists"), False),
        (c("text", "exists"), True),
        (c("generation.text", "exists"), False),
        (c("metadata.tier", "exists", False), False),
        (c("metadata.missing", "exists", False), True),
        (c("text.redacted", "exists"), False),  # proto default False counts as unset
    ],
)
def test_exists(cond, expected):
    assert evaluate(cond, MSG) is expected


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [("eq", "x", False), ("ne", "x", True), ("in", ["x"], False), ("not_in", ["x"], True),
     ("lt", 1, False), ("ge", 0, False), ("matches", ".*", False)],
)
def test_absent_field(op, value, expected):
    assert evaluate(c("generation.score", op, value), MSG) is expected
    assert evaluate(c("metadata.missing", op, value), MSG) is expected


def test_adaptive_threshold_replaces_value():
    cond = Condition(field="classification.confidence", op="lt",
                     value_from={"state": "t", "initial": 0.5, "min": 0.0, "max": 1.0})
    assert evaluate(cond, MSG, threshold=0.3) is True
    assert evaluate(cond, MSG, threshold=0.2) is False


def test_float32_fields_compare_as_stored():
    m = pb.Message(classification=pb.Classification(confidence=0.7))
    # 0.7 is stored as float32 (0.69999998...), so it is below the float64 literal 0.7.
    assert evaluate(c("classification.confidence", "lt", 0.7), m) is True
    assert evaluate(c("classification.confidence", "ge", 0.69), m) is True
