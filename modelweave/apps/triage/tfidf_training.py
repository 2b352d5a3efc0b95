"""Training the TF-IDF cheap tiers: the tweet model and the one adapted to support traffic.

The adapted (``support``) tier answers issue 12's finding that the tweet-trained cheap tier is
what holds the graph back out of domain: a few hundred labelled messages of the target domain,
weighted up against the 26k tweets, teach it the register and vocabulary of support mail
(refunds, invoices, plainly stated problems that are neutral, not negative) without losing the
tweets (validation accuracy unchanged). The fine-tuned expensive tier gets the same messages
(``prepare.RECIPE["finetune"]["support_repeats"]``), so both tiers know the domain.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelweave.apps.triage import calibration as cal
from modelweave.apps.triage import data


def pipeline(recipe: dict[str, Any]) -> Any:
    """Word and char_wb TF-IDF (sublinear tf) into a multinomial logistic regression.

    Args:
        recipe: ``word_ngrams``, ``char_ngrams``, ``min_df`` and ``C`` (``prepare.RECIPE["tfidf"]``).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    word = TfidfVectorizer(ngram_range=tuple(recipe["word_ngrams"]), sublinear_tf=True, min_df=recipe["min_df"])
    char = TfidfVectorizer(
        analyzer="char_wb", ngram_range=tuple(recipe["char_ngrams"]), sublinear_tf=True, min_df=recipe["min_df"]
    )
    features = FeatureUnion([("word", word), ("char", char)])
    return Pipeline([("features", features), ("lr", LogisticRegression(C=recipe["C"], max_iter=2000))])


def train_support_tier(
    path: Path,
    recipe: dict[str, Any],
    weight: float,
    train: Sequence[data.Tweet],
    messages: Sequence[data.SupportMessage],
    validation: Sequence[data.Tweet],
    classes: list[str],
    y_val: Any,
) -> dict[str, Any]:
    """Trains the ``support`` tier on tweets + weighted support messages and saves it to ``path``.

    The temperature is fitted on the validation tweets like every other model's, so the support
    development set trains the model and nothing else: no threshold or weight is read off it here.

    Args:
        path: Where the fitted pipeline is written (joblib).
        recipe: The TF-IDF recipe (:func:`pipeline`).
        weight: How many tweets one support message weighs in the loss.
        train: Training tweets.
        messages: Labelled support messages (:func:`.data.support_dev`).
        validation: Validation tweets (temperature and accuracy).
        classes: The tweet model's class order; the support tier must report the same.
        y_val: Validation labels as indices of ``classes``.

    Returns:
        ``temperature``, validation ``accuracy`` (raw probabilities) and ``size`` (messages used).
    """
    import joblib
    import numpy as np

    model = pipeline(recipe)
    weights = np.concatenate([np.ones(len(train)), np.full(len(messages), weight)])
    model.fit([x.text for x in train] + [m.text for m in messages],
              [x.label for x in train] + [m.label for m in messages], lr__sample_weight=weights)
    if [str(c) for c in model.classes_] != classes:
        raise RuntimeError(f"support tier classes {list(model.classes_)} differ from {classes}")
    joblib.dump(model, path)
    raw = model.predict_proba([x.text for x in validation])
    return {"temperature": cal.fit_temperature(raw, y_val), "accuracy": cal.accuracy(raw, y_val),
            "size": len(messages)}
