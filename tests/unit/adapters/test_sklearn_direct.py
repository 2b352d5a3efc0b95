"""The direct call path through fitted scikit-learn text pipelines: identical output or not used."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelweave.adapters.sklearn import SklearnClassifier
from modelweave.adapters.sklearn_direct import direct_predict_proba
from modelweave.codecs import message_from_text
from tests.unit.adapters.text_pipelines import fit, union_pipeline
from tests.unit.adapters.text_pipelines import texts as sample_texts

sklearn = pytest.importorskip("sklearn")
joblib = pytest.importorskip("joblib")

from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer, TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402


@pytest.mark.parametrize("build", [
    union_pipeline,
    lambda: fit(make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000))),
    lambda: fit(make_pipeline(CountVectorizer(), TfidfTransformer(), LogisticRegression(max_iter=1000))),
], ids=["feature-union", "vectoriser", "two-transforms"])
def test_the_direct_path_gives_the_estimators_probabilities(build: Any) -> None:
    pipe = build()
    direct = direct_predict_proba(pipe)
    assert direct is not None
    for seed in range(5):
        texts = sample_texts(random.Random(seed).randint(1, 40), seed + 10)
        assert np.array_equal(direct(texts), pipe.predict_proba(texts))
    assert np.array_equal(direct(["x"]), pipe.predict_proba(["x"]))  # one text, as online


def test_shapes_it_does_not_handle_keep_scikit_learns_own_path() -> None:
    assert direct_predict_proba(union_pipeline(union={"transformer_weights": {"word": 2.0, "char": 1.0}})) is None
    dropped = union_pipeline()
    dropped.set_params(features__char="drop")
    assert direct_predict_proba(dropped) is None
    assert direct_predict_proba(LogisticRegression()) is None  # not a pipeline
    scaled = union_pipeline()
    # What set_output(transform="pandas") records (text vectorisers do not offer set_output themselves).
    scaled.named_steps["features"]._sklearn_output_config = {"transform": "pandas"}
    assert direct_predict_proba(scaled) is None


def test_a_path_that_would_differ_on_the_probes_is_not_used() -> None:
    pipe = union_pipeline()
    assert direct_predict_proba(pipe, probes=["great thanks", "late broken refund"]) is not None
    original = pipe.predict_proba
    # Something the plain calls would miss (a subclass's own predict_proba): the probes catch it.
    pipe.predict_proba = lambda texts: original(texts) * 0.5  # type: ignore[method-assign]
    assert direct_predict_proba(pipe, probes=["great thanks"]) is None


def test_the_adapter_uses_it_for_text_and_answers_as_before(tmp_path: Path) -> None:
    pipe = union_pipeline()
    path = tmp_path / "tfidf.joblib"
    joblib.dump(pipe, path)
    clf = SklearnClassifier(model_path=str(path), model_name="tfidf")
    clf.load()
    assert clf._direct is not None
    texts = sample_texts(50, 7)
    out = clf.predict([message_from_text(t or "x") for t in texts])
    expected = pipe.predict_proba([t or "x" for t in texts])
    for got, row in zip(out, expected, strict=True):
        assert got.label == pipe.classes_[int(np.argmax(row))]
        assert got.confidence == pytest.approx(float(row.max()), abs=1e-7)
