"""A compiled path for TF-IDF -> logistic-regression text pipelines, checked against them at load.

Why: for one short text, scikit-learn's sparse machinery costs far more than the arithmetic.
On the triage TF-IDF tier (word 1-2 and char_wb 2-5 TF-IDF, ~200k features, a 3-class logistic
regression) one text took ~1.1 ms of CPU on the checks-skipped path of
:mod:`.sklearn_direct`: the analyzers ~0.05 ms, the rest building, sorting, scaling,
normalising and stacking CSR matrices, then a sparse product. Called inside the ingress, that
CPU also holds the interpreter while the concurrent PII redaction wants it.

This path runs the same fitted objects' analyzers and vocabularies, then does the rest on the
few features a text has: counts -> (sublinear) tf -> idf -> norm per vectorizer, and the
classifier's decision as a gather of those features' coefficient rows, then its softmax. No
matrix is built. It handles one shape only: a ``Pipeline`` of one ``TfidfVectorizer`` or
``CountVectorizer`` (float64), or a weightless ``FeatureUnion`` of them, ending in a
``LogisticRegression`` with three or more classes. :func:`compile_tfidf_linear` then checks it
against ``predict_proba`` on probe texts and returns it only when every probability agrees
within :data:`TOLERANCE` and every argmax is the same; otherwise the caller keeps the other path.

The probabilities are not bit-identical: the features are summed in another order, which
moves the last bits of a float64 (differences ~1e-16 on the probes). A confidence compared with
a threshold can only branch differently when it lies within that distance of the threshold.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelweave.adapters.sklearn_direct import PROBE_TEXTS, _custom_output

logger = logging.getLogger("modelweave.adapters.sklearn")

#: Largest difference allowed between this path's probabilities and ``predict_proba``'s on a probe.
TOLERANCE = 1e-12


@dataclass(frozen=True)
class _Vectorizer:
    """What one fitted vectorizer does to a text, as plain data."""

    analyze: Callable[[str], Sequence[str]]
    vocabulary: dict[str, int]
    offset: int  # first column of this vectorizer's features in the stacked matrix
    binary: bool
    sublinear: bool
    idf: np.ndarray | None
    norm: str | None


def compile_tfidf_linear(estimator: Any, probes: Sequence[str] = PROBE_TEXTS
                         ) -> Callable[[list[str]], np.ndarray] | None:
    """``estimator.predict_proba`` for lists of strings, computed on each text's features alone.

    Args:
        estimator: A fitted estimator (usually a ``Pipeline``).
        probes: Texts on which both paths must agree (within :data:`TOLERANCE`, same argmax).

    Returns:
        The compiled function, or None when the estimator's shape is not one it handles or it
        disagrees on a probe.
    """
    plan = _plan(estimator)
    if plan is None:
        return None
    vectorizers, coef_t, intercept = plan

    def predict_proba(texts: list[str]) -> np.ndarray:
        decision = np.tile(intercept, (len(texts), 1))
        for row, text in enumerate(texts):
            for v in vectorizers:
                columns, values = _features(v, text)
                if columns is not None:
                    decision[row] += values @ coef_t[columns]
        decision -= decision.max(axis=1, keepdims=True)
        np.exp(decision, out=decision)
        decision /= decision.sum(axis=1, keepdims=True)
        return decision

    try:
        expected = np.asarray(estimator.predict_proba(list(probes)), dtype=np.float64)
        got = predict_proba(list(probes))
    except Exception:  # noqa: BLE001 - any failure means: keep the other path
        logger.debug("compiled TF-IDF path failed on the probes; not used", exc_info=True)
        return None
    if (got.shape != expected.shape or float(np.max(np.abs(got - expected))) > TOLERANCE
            or not np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))):
        logger.debug("compiled TF-IDF path differs from predict_proba on the probes; not used")
        return None
    return predict_proba


def _features(v: _Vectorizer, text: str) -> tuple[np.ndarray | None, np.ndarray]:
    """(stacked columns, values) of one text's non-zero features, as the vectorizer computes them."""
    counts: dict[int, int] = {}
    vocabulary = v.vocabulary
    for feature in v.analyze(text):
        j = vocabulary.get(feature)
        if j is not None:
            counts[j] = counts.get(j, 0) + 1
    if not counts:
        return None, np.empty(0)
    columns = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    values = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    if v.binary:
        values.fill(1.0)
    if v.sublinear:
        np.log(values, out=values)
        values += 1.0
    if v.idf is not None:
        values *= v.idf[columns]
    if v.norm == "l2":
        # scikit-learn's row normalisation: sqrt of the sum of squares; all-zero rows stay zero
        norm = math.sqrt(float(np.dot(values, values)))
        if norm != 0.0:
            values /= norm
    elif v.norm == "l1":
        norm = float(np.abs(values).sum())
        if norm != 0.0:
            values /= norm
    return columns + v.offset, values


def _plan(estimator: Any) -> tuple[list[_Vectorizer], np.ndarray, np.ndarray] | None:
    """(vectorizers with their column offsets, coefficients as (features, classes), intercepts) or None."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    if not isinstance(estimator, Pipeline) or getattr(estimator, "memory", None) is not None:
        return None
    steps = [step for _, step in estimator.steps]
    if len(steps) != 2 or type(steps[1]) is not LogisticRegression:
        return None
    features, classifier = steps
    if isinstance(features, FeatureUnion):
        if features.transformer_weights:
            return None
        parts = [part for _, part in features.transformer_list]
    else:
        parts = [features]
    vectorizers: list[_Vectorizer] = []
    offset = 0
    for part in parts:
        # Exactly these classes: a subclass may change what transform does.
        if type(part) not in (TfidfVectorizer, CountVectorizer) or part.dtype is not np.float64 \
                or _custom_output(part):
            return None
        tfidf = type(part) is TfidfVectorizer
        vocabulary = part.vocabulary_  # the fitted dict itself: a copy would cost ~10 MB per 200k features
        if type(vocabulary) is not dict:
            return None
        vectorizers.append(_Vectorizer(
            analyze=part.build_analyzer(), vocabulary=vocabulary, offset=offset, binary=bool(part.binary),
            sublinear=bool(tfidf and part.sublinear_tf),
            idf=np.asarray(part.idf_, dtype=np.float64) if tfidf and part.use_idf else None,
            norm=part.norm if tfidf else None,
        ))
        offset += len(vocabulary)
    coef = np.asarray(classifier.coef_, dtype=np.float64)
    if _custom_output(estimator) or _custom_output(features) or coef.shape[0] < 3 or coef.shape[1] != offset:
        return None
    return vectorizers, np.ascontiguousarray(coef.T), np.asarray(classifier.intercept_, dtype=np.float64)

