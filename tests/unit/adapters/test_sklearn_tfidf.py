"""The compiled TF-IDF -> logistic-regression path: predict_proba's numbers (to 1e-12) or not used."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelweave.adapters.sklearn import SklearnClassifier
from modelweave.adapters.sklearn_tfidf import TOLERANCE, compile_tfidf_linear
from modelweave.codecs import message_from_text

sklearn = pytest.importorskip("sklearn")
joblib = pytest.importorskip("joblib")

from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer, TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.naive_bayes import MultinomialNB  # noqa: E402
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline  # noqa: E402

_WORDS = ["late", "broken", "refund", "great", "thanks", "order", "where", "not", "good", "déçu", "colis", "😀",
          "fast", "support", "!", "?", "123", "#notcool", "Late", "REFUND", "the", "and"]
_LABELS = ["negative", "positive", "neutral"]


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(0, 14))) for _ in range(n)]


def _fit(pipe: Any, labels: list[str] = _LABELS) -> Any:
    texts = _texts(300, 1)
    return pipe.fit(texts, [labels[(len(t) + t.count("e")) % len(labels)] for t in texts])


def _union(**vectorizer: Any) -> Pipeline:
    """The triage TF-IDF tier's shape: word and character TF-IDF side by side, then a logistic regression."""
    features = FeatureUnion([
        ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, **vectorizer)),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, **vectorizer)),
    ])
    return _fit(Pipeline([("features", features), ("lr", LogisticRegression(C=4.0, max_iter=2000))]))


def _agrees(compiled: Any, pipe: Any, texts: list[str]) -> None:
    got, expected = compiled(texts), pipe.predict_proba(texts)
    assert got.shape == expected.shape
    assert float(np.max(np.abs(got - expected))) <= TOLERANCE
    assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))


@pytest.mark.parametrize("build", [
    _union,
    lambda: _union(min_df=2, binary=True),
    lambda: _union(norm="l1", use_idf=False, lowercase=False),
    lambda: _union(norm=None, smooth_idf=False, strip_accents="unicode"),
    lambda: _fit(make_pipeline(TfidfVectorizer(stop_words=["the", "and"]), LogisticRegression(max_iter=1000))),
    lambda: _fit(make_pipeline(CountVectorizer(ngram_range=(1, 3), dtype=np.float64),
                               LogisticRegression(max_iter=1000))),
], ids=["triage-shape", "binary-min-df", "l1-no-idf-case", "no-norm-accents", "stop-words", "counts"])
def test_it_gives_the_pipelines_probabilities(build: Any) -> None:
    pipe = build()
    compiled = compile_tfidf_linear(pipe)
    assert compiled is not None
    for seed in range(5):
        _agrees(compiled, pipe, _texts(random.Random(seed).randint(1, 40), seed + 10))
    # One text, as online; texts with no known feature at all (only the intercepts decide).
    for texts in (["x"], [""], ["zzzz qqqq"], ["late"] * 3):
        _agrees(compiled, pipe, texts)


def test_shapes_it_does_not_handle_are_left_to_the_other_paths() -> None:
    union = _union()
    weighted = _union()
    weighted.named_steps["features"].transformer_weights = {"word": 2.0, "char": 1.0}
    assert compile_tfidf_linear(weighted) is None
    assert compile_tfidf_linear(union.named_steps["lr"]) is None  # not a pipeline
    assert compile_tfidf_linear(_fit(make_pipeline(TfidfVectorizer(), LogisticRegression()), ["a", "b"])) is None
    assert compile_tfidf_linear(_fit(make_pipeline(TfidfVectorizer(), MultinomialNB()))) is None
    two_steps = make_pipeline(CountVectorizer(), TfidfTransformer(), LogisticRegression())
    assert compile_tfidf_linear(_fit(two_steps)) is None
    assert compile_tfidf_linear(_fit(make_pipeline(TfidfVectorizer(dtype=np.float32), LogisticRegression()))) is None
    pandas_out = _union()
    pandas_out.named_steps["features"]._sklearn_output_config = {"transform": "pandas"}
    assert compile_tfidf_linear(pandas_out) is None


def test_a_path_that_would_differ_on_the_probes_is_not_used() -> None:
    pipe = _union()
    assert compile_tfidf_linear(pipe, probes=["great thanks", "late broken refund"]) is not None
    original = pipe.predict_proba
    # A difference far below any label change but above the tolerance: caught by the probes.
    pipe.predict_proba = lambda texts: original(texts) + 1e-9  # type: ignore[method-assign]
    assert compile_tfidf_linear(pipe, probes=["great thanks"]) is None


def test_the_adapter_uses_it_and_answers_as_before(tmp_path: Path) -> None:
    pipe = _union()
    path = tmp_path / "tfidf.joblib"
    joblib.dump(pipe, path)
    clf = SklearnClassifier(model_path=str(path), model_name="tfidf")
    clf.load()
    assert clf._direct is not None and clf._direct.__module__ == "modelweave.adapters.sklearn_tfidf"
    texts = [t or "x" for t in _texts(50, 7)]
    out = clf.predict([message_from_text(t) for t in texts])
    for got, row in zip(out, pipe.predict_proba(texts), strict=True):
        assert got.label == pipe.classes_[int(np.argmax(row))]
        assert got.confidence == pytest.approx(float(row.max()), abs=1e-7)
