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
from tests.unit.adapters.text_pipelines import fit, union_pipeline
from tests.unit.adapters.text_pipelines import texts as sample_texts

sklearn = pytest.importorskip("sklearn")
joblib = pytest.importorskip("joblib")

from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer, TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.naive_bayes import MultinomialNB  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402


def _agrees(compiled: Any, pipe: Any, texts: list[str]) -> None:
    got, expected = compiled(texts), pipe.predict_proba(texts)
    assert got.shape == expected.shape
    assert float(np.max(np.abs(got - expected))) <= TOLERANCE
    assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))


@pytest.mark.parametrize("build", [
    union_pipeline,
    lambda: union_pipeline(min_df=2, binary=True),
    lambda: union_pipeline(norm="l1", use_idf=False, lowercase=False),
    lambda: union_pipeline(norm=None, smooth_idf=False, strip_accents="unicode"),
    lambda: fit(make_pipeline(TfidfVectorizer(stop_words=["the", "and"]), LogisticRegression(max_iter=1000))),
    lambda: fit(make_pipeline(CountVectorizer(ngram_range=(1, 3), dtype=np.float64),
                               LogisticRegression(max_iter=1000))),
], ids=["triage-shape", "binary-min-df", "l1-no-idf-case", "no-norm-accents", "stop-words", "counts"])
def test_it_gives_the_pipelines_probabilities(build: Any) -> None:
    pipe = build()
    compiled = compile_tfidf_linear(pipe)
    assert compiled is not None
    for seed in range(5):
        _agrees(compiled, pipe, sample_texts(random.Random(seed).randint(1, 40), seed + 10))
    # One text, as online; texts with no known feature at all (only the intercepts decide).
    for texts in (["x"], [""], ["zzzz qqqq"], ["late"] * 3):
        _agrees(compiled, pipe, texts)


def test_shapes_it_does_not_handle_are_left_to_the_other_paths() -> None:
    union = union_pipeline()
    weighted = union_pipeline()
    weighted.named_steps["features"].transformer_weights = {"word": 2.0, "char": 1.0}
    assert compile_tfidf_linear(weighted) is None
    assert compile_tfidf_linear(union.named_steps["lr"]) is None  # not a pipeline
    assert compile_tfidf_linear(fit(make_pipeline(TfidfVectorizer(), LogisticRegression()), ["a", "b"])) is None
    assert compile_tfidf_linear(fit(make_pipeline(TfidfVectorizer(), MultinomialNB()))) is None
    two_steps = make_pipeline(CountVectorizer(), TfidfTransformer(), LogisticRegression())
    assert compile_tfidf_linear(fit(two_steps)) is None
    assert compile_tfidf_linear(fit(make_pipeline(TfidfVectorizer(dtype=np.float32), LogisticRegression()))) is None
    pandas_out = union_pipeline()
    pandas_out.named_steps["features"]._sklearn_output_config = {"transform": "pandas"}
    assert compile_tfidf_linear(pandas_out) is None


def test_a_path_that_would_differ_on_the_probes_is_not_used() -> None:
    pipe = union_pipeline()
    assert compile_tfidf_linear(pipe, probes=["great thanks", "late broken refund"]) is not None
    original = pipe.predict_proba
    # A difference far below any label change but above the tolerance: caught by the probes.
    pipe.predict_proba = lambda texts: original(texts) + 1e-9  # type: ignore[method-assign]
    assert compile_tfidf_linear(pipe, probes=["great thanks"]) is None


def test_the_adapter_uses_it_and_answers_as_before(tmp_path: Path) -> None:
    pipe = union_pipeline()
    path = tmp_path / "tfidf.joblib"
    joblib.dump(pipe, path)
    clf = SklearnClassifier(model_path=str(path), model_name="tfidf")
    clf.load()
    assert clf._direct is not None and clf._direct.__module__ == "modelweave.adapters.sklearn_tfidf"
    texts = [t or "x" for t in sample_texts(50, 7)]
    out = clf.predict([message_from_text(t) for t in texts])
    for got, row in zip(out, pipe.predict_proba(texts), strict=True):
        assert got.label == pipe.classes_[int(np.argmax(row))]
        assert got.confidence == pytest.approx(float(row.max()), abs=1e-7)
