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


def train_tier(
    path: Path,
    recipe: dict[str, Any],
    train: Sequence[data.Tweet],
    validation: Sequence[data.Tweet],
    messages: Sequence[data.SupportMessage] = (),
    weight: float = 1.0,
) -> tuple[Any, Any]:
    """Trains one TF-IDF tier, saves it to ``path`` and scores the validation tweets.

    With ``messages`` this is the ``support`` tier: the support messages join the tweets, each
    weighing ``weight`` tweets in the loss. Its temperature is then fitted on the validation
    tweets like every other model's, so the support development set trains the model and
    nothing else: no threshold or weight is read off it here.

    Args:
        path: Where the fitted pipeline is written (joblib).
        recipe: The TF-IDF recipe (:func:`pipeline`).
        train: Training tweets.
        validation: Validation tweets.
        messages: Labelled support messages (:func:`.data.support_dev`); none for the tweet tier.
        weight: How many tweets one support message weighs in the loss.

    Returns:
        The fitted pipeline and its raw validation probabilities (rows of ``validation``).
    """
    import joblib
    import numpy as np

    model = pipeline(recipe)
    texts = [x.text for x in train] + [m.text for m in messages]
    labels = [x.label for x in train] + [m.label for m in messages]
    if messages:
        weights = np.concatenate([np.ones(len(train)), np.full(len(messages), weight)])
        model.fit(texts, labels, lr__sample_weight=weights)
    else:  # unweighted, as the tweet tier has always been fitted
        model.fit(texts, labels)
    joblib.dump(model, path)
    return model, model.predict_proba([x.text for x in validation])
