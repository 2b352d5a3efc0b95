"""Small fitted scikit-learn text pipelines for the tests of the adapter's fast paths."""

from __future__ import annotations

import random
from typing import Any

WORDS = ["late", "broken", "refund", "great", "thanks", "order", "where", "not", "good", "déçu", "colis", "😀",
         "fast", "support", "!", "?", "123", "#notcool", "Late", "REFUND", "the", "and"]
LABELS = ["negative", "positive", "neutral"]


def texts(n: int, seed: int, max_words: int = 14) -> list[str]:
    """``n`` seeded texts of 0..``max_words`` words from :data:`WORDS` (some empty)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, max_words))) for _ in range(n)]


def fit(pipe: Any, labels: list[str] = LABELS) -> Any:
    """``pipe`` fitted on 300 seeded texts, labelled by a rule over their characters."""
    corpus = texts(300, 1)
    return pipe.fit(corpus, [labels[(len(t) + t.count("e")) % len(labels)] for t in corpus])


def union_pipeline(union: dict[str, Any] | None = None, **vectorizer: Any) -> Any:
    """The triage TF-IDF tier's shape, fitted: word and character TF-IDF side by side (``FeatureUnion``
    options ``union``; ``vectorizer`` options for both), then a logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    features = FeatureUnion([
        ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, **vectorizer)),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, **vectorizer)),
    ], **(union or {}))
    return fit(Pipeline([("features", features), ("lr", LogisticRegression(C=4.0, max_iter=2000))]))
