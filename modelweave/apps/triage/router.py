"""A learned router for the sentiment cascade (RouteLLM's idea, for classifiers).

The plain cascade escalates when the cheap TF-IDF tier's calibrated top probability is
below a threshold. The learned router instead predicts *whether the cheap tier is wrong*
from more signals than that one number:

- the cheap tier's distribution: top probability, margin to the second label, entropy and
  the predicted label (the cheap tier is wrong more often on some labels than others);
- the text: length in characters and words, the share of its words that the TF-IDF
  vocabulary never saw (out-of-vocabulary share: the model is guessing), exclamation and
  question marks, upper-case share, digit share, negation and contrast words ("not",
  "but", "although": mixed or reversed feelings);
- the language (fastText, read from ``Text.language`` when an upstream ``LanguageId`` set
  it, otherwise detected here with the same bundled model).

``prepare()`` trains it (:func:`build`) on the VALIDATION split, where the TF-IDF tier's
errors are honest (it was trained on the train split): a standardised logistic regression
on the features above, target "TF-IDF's label is wrong". Its out-of-fold predictions choose
the threshold (the same rule as the plain cascade's) and are compared with the plain
confidence in the manifest (ROC AUC of predicting a cheap-tier error).

Serving (:class:`LearnedRouter`, Text + Classification -> Classification): the cheap tier's
label and scores are kept and only ``confidence`` is replaced by the router's probability
that the cheap label is right, so a ``route`` rule on ``classification.confidence`` uses it
exactly as the plain cascade uses the TF-IDF confidence (and ``modelweave eval --sweep``
sweeps both the same way). A router *label* (escalate/keep) would not do: the executor
writes a router model's Classification over the message's, and the sentiment label of
the messages that stay on the cheap tier would be lost.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelweave.adapters.base import ModelAdapter
from modelweave.apps.triage import artifacts as art
from modelweave.apps.triage.calibration import escalation_curve as curve  # the plain cascade's rule too
from modelweave.apps.triage.calibration import threshold_within as choose_threshold
from modelweave.apps.triage.data import LABELS, Tweet
from modelweave.errors import FailedPrecondition
from modelweave.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    import numpy as np

#: Artifact file of the router: a joblib dict (estimator, vocabulary, feature names).
ROUTER_MODEL = "sentiment_router.joblib"

#: Feature columns, in order. Changing them changes the artifact: retrain (prepare).
FEATURES = (
    "confidence", "margin", "entropy", "pred_negative", "pred_neutral", "pred_positive",
    "log_chars", "log_words", "oov_share", "exclamations", "questions", "upper_share",
    "digit_share", "negation", "non_english", "language_score",
)

#: Same tokens as scikit-learn's default ``token_pattern`` (the TF-IDF word analyzer's).
_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_NEGATION = re.compile(
    r"(?i)\b(?:not|no|never|nothing|nobody|none|nor|cannot|without|but|however|although|though|yet)\b|n't\b"
)


def vocabulary_of(tfidf: Any) -> frozenset[str]:
    """The unigrams of the TF-IDF pipeline's word analyzer (what the cheap tier knows)."""
    for name, step in tfidf.named_steps["features"].transformer_list:
        if name == "word":
            return frozenset(term for term in step.vocabulary_ if " " not in term)
    raise ValueError("the TF-IDF pipeline has no 'word' vectorizer")


def text_features(text: str, vocabulary: frozenset[str]) -> list[float]:
    """The text-only features (``log_chars`` .. ``negation``) of one message."""
    tokens = _TOKEN.findall(text.lower())
    letters = [ch for ch in text if ch.isalpha()]
    oov = sum(1 for t in tokens if t not in vocabulary) / len(tokens) if tokens else 1.0
    return [
        math.log1p(len(text)),
        math.log1p(len(tokens)),
        oov,
        math.log1p(text.count("!")),
        math.log1p(text.count("?")),
        sum(1 for ch in letters if ch.isupper()) / len(letters) if letters else 0.0,
        sum(1 for ch in text if ch.isdigit()) / len(text) if text else 0.0,
        1.0 if _NEGATION.search(text) else 0.0,
    ]


def features(texts: Sequence[str], proba: np.ndarray, languages: Sequence[tuple[str, float]],
             vocabulary: frozenset[str]) -> np.ndarray:
    """The router's feature matrix ``[len(texts), len(FEATURES)]``.

    Args:
        texts: The messages, as the cheap tier saw them.
        proba: The cheap tier's calibrated probabilities in :data:`LABELS` order.
        languages: ``(language code, fastText score)`` per text; ``""`` is unknown
            (no letters) and counts as English.
        vocabulary: :func:`vocabulary_of` the cheap tier.

    Raises:
        ValueError: when the lengths differ or ``proba`` has the wrong width.
    """
    import numpy as np

    if proba.shape != (len(texts), len(LABELS)) or len(languages) != len(texts):
        raise ValueError(f"router features: {len(texts)} texts, proba {proba.shape}, {len(languages)} languages")
    ordered = np.sort(proba, axis=1)
    top, second = ordered[:, -1], ordered[:, -2]
    entropy = -(proba * np.log(np.clip(proba, 1e-12, 1.0))).sum(axis=1)
    predicted = np.eye(len(LABELS))[proba.argmax(axis=1)]
    rows = [text_features(t, vocabulary) for t in texts]
    lang = [[0.0 if code in ("", "en") else 1.0, score if code else 1.0] for code, score in languages]
    matrix = np.column_stack([top, top - second, entropy, predicted, np.array(rows).reshape(len(texts), -1),
                              np.array(lang).reshape(len(texts), 2)])
    return matrix.astype(np.float64)


def fit_router(x: np.ndarray, wrong: np.ndarray, C: float) -> Any:
    """A standardised logistic regression predicting ``wrong`` (1: the cheap label is wrong)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    model.fit(x, wrong)
    return model


def out_of_fold(x: np.ndarray, wrong: np.ndarray, C: float, folds: int, seed: int) -> np.ndarray:
    """P(wrong) for every row from a router that never saw that row (stratified k-fold)."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    folds = min(folds, int(wrong.sum()), int(len(wrong) - wrong.sum()))
    if folds < 2:
        raise ValueError("router: need at least two right and two wrong cheap-tier answers to train")
    out = np.zeros(len(wrong))
    for train_idx, test_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, wrong):
        out[test_idx] = fit_router(x[train_idx], wrong[train_idx], C).predict_proba(x[test_idx])[:, 1]
    return out


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` (ties count half)."""
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[positive.astype(bool)].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def detect_languages(texts: Sequence[str]) -> list[tuple[str, float]]:
    """``(code, score)`` per text with the triage ``LanguageId`` model (bundled fastText)."""
    from modelweave.apps.triage.preprocess import LanguageId

    detector = LanguageId()
    detector.load()
    return [detector.detect(t) for t in texts]


def build(out: Path, tfidf: Any, validation: Sequence[Tweet], tfidf_val: np.ndarray, subset: Sequence[int],
          final_sub: np.ndarray, recipe: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """Trains the router on the validation split and writes :data:`ROUTER_MODEL` to ``out``.

    Args:
        out: Artifact directory being built.
        tfidf: The fitted TF-IDF pipeline (its vocabulary is a feature).
        validation: The validation tweets, in the order of ``tfidf_val``'s rows.
        tfidf_val: The cheap tier's calibrated probabilities on ``validation``.
        subset: Rows of ``validation`` that ``final_sub`` answers (the embedded subset).
        final_sub: The expensive tier's probabilities on ``subset`` (to choose the threshold).
        recipe: ``RECIPE["router"]`` (``C``, ``folds``, ``seed``).
        tolerance: Accuracy the chosen threshold may give up versus the best one.

    Returns:
        ``{"threshold": float, "metrics": {...}}`` for the manifest.
    """
    import joblib
    import numpy as np

    if [str(c) for c in tfidf.classes_] != list(LABELS):
        raise ValueError(f"router: TF-IDF classes {list(tfidf.classes_)} != {list(LABELS)}")
    vocabulary = vocabulary_of(tfidf)
    texts = [t.text for t in validation]
    y = np.array([LABELS.index(t.label) for t in validation])
    wrong = (tfidf_val.argmax(axis=1) != y).astype(np.int64)
    x = features(texts, tfidf_val, detect_languages(texts), vocabulary)
    oof_wrong = out_of_fold(x, wrong, recipe["C"], recipe["folds"], recipe["seed"])
    model = fit_router(x, wrong, recipe["C"])
    joblib.dump({"model": model, "vocabulary": sorted(vocabulary), "features": list(FEATURES),
                 "labels": list(LABELS)}, out / ROUTER_MODEL)
    rows = np.asarray(subset, dtype=np.int64)
    cheap_sub, y_sub = tfidf_val[rows], y[rows]
    router_points = curve(1.0 - oof_wrong[rows], cheap_sub, final_sub, y_sub)
    plain_points = curve(cheap_sub.max(axis=1), cheap_sub, final_sub, y_sub)
    threshold = choose_threshold(router_points, tolerance)
    at = {t: (a, e) for t, a, e in router_points}[threshold]
    coefficients = model[-1].coef_[0]
    return {
        "threshold": threshold,
        "metrics": {
            "cheap_error_rate": float(wrong.mean()),
            # How well each signal ranks the cheap tier's errors (out of fold for the router).
            "auc_router": roc_auc(oof_wrong, wrong),
            "auc_confidence": roc_auc(-tfidf_val.max(axis=1), wrong),
            "accuracy": at[0],
            "escalated": at[1],
            # Accuracy of both cascades at equal escalation budgets (validation subset).
            "frontier": {f"{share:.0%}": {"router": _at_budget(router_points, share),
                                          "confidence": _at_budget(plain_points, share)}
                         for share in (0.1, 0.2, 0.3, 0.4, 0.5)},
            "coefficients": {name: round(float(c), 4) for name, c in zip(FEATURES, coefficients, strict=True)},
        },
    }


def _at_budget(points: list[tuple[float, float, float]], share: float) -> float:
    """Best accuracy among thresholds escalating at most ``share`` of the rows."""
    return max((acc for _, acc, esc in points if esc <= share + 1e-9), default=float("nan"))


class RouterParams(art.TriageParams):
    """Parameters of :class:`LearnedRouter`."""


class LearnedRouter(ModelAdapter):
    """Text + Classification -> Classification: the cheap label, confidence = P(it is right).

    Reads the cheap tier's Classification (label scores) and the Text; keeps label and
    scores, replaces ``confidence`` by the learned probability that the label is right and
    appends ``+router`` to ``model``.
    """

    consumes = ("Text", "Classification")
    produces = "Classification"
    Params = RouterParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._model: Any = None
        self._vocabulary: frozenset[str] = frozenset()
        self._language: Any = None

    def load(self) -> None:
        """Loads the router trained by ``prepare()`` and the fastText language model."""
        import joblib

        from modelweave.apps.triage.preprocess import LanguageId

        bundle = joblib.load(art.Artifacts(self.params.data_dir).path(ROUTER_MODEL))
        if bundle.get("features") != list(FEATURES) or bundle.get("labels") != list(LABELS):
            raise FailedPrecondition("LearnedRouter: the router artifact has other features; run prepare again")
        self._model, self._vocabulary = bundle["model"], frozenset(bundle["vocabulary"])
        self._language = LanguageId()
        self._language.load()

    def keep_probability(self, batch: Sequence[pb.Message]) -> np.ndarray:
        """P(the cheap label is right) per message.

        Raises:
            FailedPrecondition: before ``load()``, or when a message's classification
                lacks scores for every label.
        """
        import numpy as np

        if self._model is None:
            raise FailedPrecondition("LearnedRouter used before load()")
        proba = np.zeros((len(batch), len(LABELS)))
        for i, m in enumerate(batch):
            scores = {s.label: s.score for s in m.classification.scores}
            if set(scores) != set(LABELS):
                raise FailedPrecondition(f"LearnedRouter: classification.scores must cover {list(LABELS)}, "
                                         f"got {sorted(scores)}")
            proba[i] = [scores[label] for label in LABELS]
        languages = [(m.text.language, m.text.language_score) if m.text.language
                     else self._language.detect(m.text.content) for m in batch]
        x = features([m.text.content for m in batch], proba, languages, self._vocabulary)
        return np.asarray(1.0 - self._model.predict_proba(x)[:, 1])

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Classification]:
        """The incoming classification with ``confidence`` = P(its label is right)."""
        if not batch:
            return []
        out = []
        for m, keep in zip(batch, self.keep_probability(batch), strict=True):
            c = pb.Classification()
            c.CopyFrom(m.classification)
            c.confidence = float(keep)
            c.model = f"{c.model}+router" if c.model else "router"
            out.append(c)
        return out

    def health(self) -> None:
        """Raises when not loaded."""
        if self._model is None:
            raise FailedPrecondition("LearnedRouter is not loaded")


__all__ = ["FEATURES", "ROUTER_MODEL", "LearnedRouter", "build", "features", "text_features", "vocabulary_of"]
