"""Embedder, answer retriever (attempt = candidate rank) and grounding validator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelweave.apps.triage import artifacts as art
from modelweave.apps.triage.models import AnswerRetriever, GroundingValidator, MiniLMEmbedder
from modelweave.errors import GraphSpecError, InvalidArgument
from modelweave.v1 import messages_pb2 as pb


@pytest.fixture(scope="module")
def index(data_dir: Path) -> dict:
    return json.loads((art.artifacts_dir(data_dir) / art.QA_INDEX).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    model = MiniLMEmbedder()
    model.load()
    return model


def _msg(text: str, attempt: int | None = None, embedder: MiniLMEmbedder | None = None) -> pb.Message:
    m = pb.Message()
    m.text.content = text
    if attempt is not None:
        m.metadata["attempt"] = str(attempt)
    if embedder is not None:
        m.embedding.CopyFrom(embedder.predict([m])[0])
    return m


def test_embedder_defaults(embedder: MiniLMEmbedder) -> None:
    (e,) = embedder.predict([_msg("hello")])
    assert e.model == art.EMBEDDING_MODEL and len(e.values) == 384 == embedder.dim


def test_signature_follows_input_param() -> None:
    assert AnswerRetriever.signature({}) == (("Embedding",), "Generation")
    assert AnswerRetriever.signature({"input": "Text"}) == (("Text",), "Generation")
    with pytest.raises(GraphSpecError, match="params.match"):
        AnswerRetriever(match="fuzzy")


def test_retries_walk_down_the_ranking(data_dir: Path, embedder: MiniLMEmbedder) -> None:
    retriever = AnswerRetriever(data_dir=str(data_dir), max_candidates=3)
    retriever.load()
    question = "Do you like to eat food?"
    outs = [retriever.predict([_msg(question, attempt, embedder)])[0] for attempt in (1, 2, 3, 4)]
    assert [o.candidate for o in outs] == [0, 1, 2, 3]
    texts = [o.text for o in outs[:3]]
    assert len(set(texts)) == 3 and all(o.source.startswith("chatterbot:") for o in outs[:3])
    assert outs[0].score >= outs[1].score >= outs[2].score > 0.0
    assert outs[3].text == "" and outs[3].score == 0.0  # candidates exhausted
    # No attempt metadata means attempt 1.
    assert retriever.predict([_msg(question, None, embedder)])[0].text == texts[0]
    with pytest.raises(InvalidArgument, match="attempt"):
        retriever.predict([_msg(question, 0, embedder)])


def test_retrieval_quality_on_indexed_questions(data_dir: Path, index: dict) -> None:
    questions = index["questions"][::3]
    ids = [a["id"] for a in index["answers"]]
    hits = {}
    for match in ("answer", "both"):
        retriever = AnswerRetriever(data_dir=str(data_dir), input="Text", match=match)
        retriever.load()
        out = retriever.predict([_msg(q["text"]) for q in questions])
        hits[match] = np.mean([ids.index(o.source) in q["answers"] for o, q in zip(out, questions, strict=True)])
    # Measured on all 300 indexed questions: answer .483, both .997.
    assert hits["answer"] > 0.35 and hits["both"] > 0.9


def test_embedding_from_another_model_is_rejected(data_dir: Path) -> None:
    retriever = AnswerRetriever(data_dir=str(data_dir))
    retriever.load()
    m = _msg("hi")
    m.embedding.CopyFrom(pb.Embedding(values=[0.1] * 384, model="other"))
    with pytest.raises(InvalidArgument, match="other"):
        retriever.predict([m])


def _qa_pairs(index: dict, embedder: MiniLMEmbedder) -> tuple[list[pb.Message], list[pb.Message]]:
    """(true answer, random answer) envelopes for every other indexed question, embedded as the
    ``embed`` node does (one batch)."""
    rng = np.random.default_rng(0)
    questions = index["questions"][::2]
    vectors = embedder.predict([_msg(q["text"]) for q in questions])
    good, bad = [], []
    for q, vector in zip(questions, vectors, strict=True):
        for answer, out in ((q["answers"][0], good), (int(rng.integers(len(index["answers"]))), bad)):
            m = _msg(q["text"])
            m.embedding.CopyFrom(vector)
            m.generation.text = index["answers"][answer]["text"]
            out.append(m)
    return good, bad


def test_grounding_validator(data_dir: Path, index: dict, embedder: MiniLMEmbedder) -> None:
    validator = GroundingValidator(data_dir=str(data_dir))
    validator.load()
    manifest = art.read_manifest(art.artifacts_dir(data_dir))
    assert validator.threshold == manifest["calibration"]["grounding_threshold"]
    good, bad = _qa_pairs(index, embedder)
    good_pass = np.mean([v.passed for v in validator.predict(good)])
    bad_out = validator.predict(bad)
    # Measured on all 300 indexed questions: true answers pass .82, random answers .09.
    assert good_pass > 0.7 and np.mean([v.passed for v in bad_out]) < 0.25
    failed = next(v for v in bad_out if not v.passed)
    assert failed.reason.startswith("answer not grounded") and failed.validator == "grounding"


def test_grounding_reuses_the_embed_nodes_vector_with_identical_verdicts(
        data_dir: Path, index: dict, embedder: MiniLMEmbedder) -> None:
    # Reading the question vector from the envelope (written by the embed node) must judge
    # exactly as embedding the question again did: same verdicts, reasons and scores.
    from_part = GroundingValidator(data_dir=str(data_dir))
    from_text = GroundingValidator(data_dir=str(data_dir), question="Text")
    from_part.load()
    from_text.load()
    good, bad = _qa_pairs(index, embedder)
    rows = good + bad
    assert from_part.predict(rows) == from_text.predict(rows)
    assert GroundingValidator.signature({}) == (("Embedding", "Generation"), "Verdict")
    assert GroundingValidator.signature({"question": "Text"}) == (("Text", "Generation"), "Verdict")


def test_grounding_with_stored_answer_vectors_agrees_with_embedding_them(
        data_dir: Path, index: dict, embedder: MiniLMEmbedder) -> None:
    # answers: index skips the encoder for corpus answers; the stored vectors come from the same
    # model, so only verdicts within rounding distance of the threshold may differ.
    embedded = GroundingValidator(data_dir=str(data_dir))
    stored = GroundingValidator(data_dir=str(data_dir), answers="index")
    embedded.load()
    stored.load()
    good, bad = _qa_pairs(index, embedder)
    rows = good + bad
    by_id = {a["text"]: a["id"] for a in index["answers"]}
    for m in rows:
        m.generation.source = by_id[m.generation.text]
    edited = _msg("What is AI?", embedder=embedder)  # names a corpus answer but says something else
    edited.generation.source, edited.generation.text = index["answers"][0]["id"], "Something else entirely."
    rows.append(edited)
    a, b = embedded.predict(rows), stored.predict(rows)
    assert a[-1] == b[-1]  # not in the index as written: embedded, exactly as before
    assert max(abs(x.score - y.score) for x, y in zip(a, b, strict=True)) < 0.01
    assert all(x.passed == y.passed for x, y in zip(a, b, strict=True)
               if abs(x.score - embedded.threshold) > 0.01)


def test_grounding_refuses_a_missing_or_foreign_embedding(data_dir: Path, embedder: MiniLMEmbedder) -> None:
    validator = GroundingValidator(data_dir=str(data_dir))
    validator.load()
    missing = _msg("What is AI?")
    missing.generation.text = "AI is artificial intelligence."
    with pytest.raises(InvalidArgument, match="0 values"):
        validator.predict([missing])
    foreign = _msg("What is AI?", embedder=embedder)
    foreign.generation.text = "AI is artificial intelligence."
    foreign.embedding.model = "other-encoder"
    with pytest.raises(InvalidArgument, match="other-encoder"):
        validator.predict([foreign])


def test_grounding_rejects_empty_and_profane_answers(data_dir: Path) -> None:
    validator = GroundingValidator(data_dir=str(data_dir), threshold=-1.0, question="Text")
    validator.load()
    empty, rude = _msg("What is AI?"), _msg("What is AI?")
    rude.generation.text = "AI is a fucking waste of time, you idiot."
    v_empty, v_rude = validator.predict([empty, rude])
    assert not v_empty.passed and "candidates exhausted" in v_empty.reason
    assert not v_rude.passed and "profane" in v_rude.reason


def test_grounding_remembers_profanity_scores_exactly(data_dir: Path, index: dict) -> None:
    # Corpus answers repeat on every request that reaches grounding: each is scored once, and the
    # remembered score is the one a fresh scoring gives (verdicts identical with and without).
    import profanity_check

    validator = GroundingValidator(data_dir=str(data_dir), threshold=-1.0, question="Text")
    validator.load()
    answers = [a["text"] for a in index["answers"][:6]] + ["AI is a fucking waste of time, you idiot."]
    batch = []
    for answer in answers + answers[:3]:
        m = _msg("What is AI?")
        m.generation.text = answer
        batch.append(m)
    scored: list[list[str]] = []
    real = profanity_check.predict_prob

    def counting(texts: list[str]) -> np.ndarray:
        scored.append(list(texts))
        return real(texts)

    validator._profanity = type("Spy", (), {"predict_prob": staticmethod(counting)})()
    first = validator.predict(batch)
    again = validator.predict(batch)
    assert [v.SerializeToString() for v in first] == [v.SerializeToString() for v in again]
    assert sorted(scored[0]) == sorted(set(answers)) and len(scored) == 1  # each text once, never again
    expected = real(answers + answers[:3])
    assert [("profane" in v.reason) for v in first] == [bool(p >= 0.5) for p in expected]
    assert validator._profanity_scores(answers) == [float(p) for p in real(answers)]
