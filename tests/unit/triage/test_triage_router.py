"""The learned router: features, training on synthetic data, the prepared artifact and its adapter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelweave.apps.triage import artifacts as art
from modelweave.apps.triage import router
from modelweave.apps.triage.data import LABELS, Tweet
from modelweave.codecs import message_from_text
from modelweave.errors import FailedPrecondition
from modelweave.v1 import messages_pb2 as pb


def test_text_features_count_unknown_words_cues_and_shape() -> None:
    vocab = frozenset({"my", "order", "is", "late"})
    names = router.FEATURES[6:14]
    f = dict(zip(names, router.text_features("My order is LATE!! not happy", vocab), strict=True))
    assert f["oov_share"] == pytest.approx(2 / 6)  # "not", "happy"
    assert f["negation"] == 1.0 and f["exclamations"] == pytest.approx(np.log1p(2))
    assert f["upper_share"] == pytest.approx(5 / 21)  # M + LATE over 21 letters
    assert router.text_features("", vocab)[2] == 1.0  # no words: all unknown
    assert router.text_features("It isn't ok", vocab)[7] == 1.0  # n't
    assert router.text_features("Order 12345", vocab)[6] == pytest.approx(5 / 11)


def test_features_of_the_distribution_and_language() -> None:
    proba = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    x = router.features(["a b", "c d"], proba, [("en", 0.9), ("fr", 0.8)], frozenset())
    assert x.shape == (2, len(router.FEATURES))
    row = dict(zip(router.FEATURES, x[0], strict=True))
    assert row["confidence"] == pytest.approx(0.7) and row["margin"] == pytest.approx(0.5)
    assert (row["pred_negative"], row["pred_neutral"], row["pred_positive"]) == (1.0, 0.0, 0.0)
    assert row["non_english"] == 0.0 and x[1][router.FEATURES.index("non_english")] == 1.0
    unknown = router.features(["123"], proba[:1], [("", 0.0)], frozenset())
    assert unknown[0][router.FEATURES.index("non_english")] == 0.0  # no letters: treated as English
    with pytest.raises(ValueError, match="router features"):
        router.features(["a"], proba, [("en", 1.0)], frozenset())


def test_roc_auc_curve_and_threshold_rule() -> None:
    pos = np.array([0, 0, 1, 1])
    assert router.roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), pos) == 1.0
    assert router.roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), pos) == 0.0
    assert router.roc_auc(np.ones(4), pos) == 0.5
    assert np.isnan(router.roc_auc(np.ones(2), np.array([1, 1])))
    cheap = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25]])
    final = np.array([[0.1, 0.8, 0.1], [0.1, 0.8, 0.1]])
    y = np.array([0, 1])
    points = router.curve(np.array([0.95, 0.5]), cheap, final, y)
    at = {t: (a, e) for t, a, e in points}
    assert at[0.5] == (0.5, 0.0) and at[0.51] == (1.0, 0.5) and at[0.96] == (0.5, 1.0)
    assert router.choose_threshold(points, 0.0) == 0.51


def test_router_learns_a_predictable_error_out_of_fold() -> None:
    """Errors driven by one feature (not the confidence): the router finds them, confidence does not."""
    rng = np.random.default_rng(0)
    n = 600
    x = rng.normal(size=(n, len(router.FEATURES)))
    wrong = (x[:, router.FEATURES.index("oov_share")] + 0.3 * rng.normal(size=n) > 0.5).astype(np.int64)
    oof = router.out_of_fold(x, wrong, C=1.0, folds=5, seed=1)
    assert router.roc_auc(oof, wrong) > 0.9
    assert abs(router.roc_auc(-x[:, 0], wrong) - 0.5) < 0.1
    with pytest.raises(ValueError, match="two right and two wrong"):
        router.out_of_fold(x[:5], np.array([1, 0, 0, 0, 0]), C=1.0, folds=5, seed=1)


def test_build_writes_the_artifact_and_chooses_a_threshold(tmp_path: Path) -> None:
    from modelweave.apps.triage.prepare import RECIPE
    from modelweave.apps.triage.tfidf_training import pipeline

    words = {"negative": "awful broken late refund", "neutral": "when where how order", "positive": "great thanks love"}
    train = [f"{words[label]} {i % 7}" for label in LABELS for i in range(30)]
    tfidf = pipeline(RECIPE["tfidf"]).fit(train, [label for label in LABELS for _ in range(30)])
    rng = np.random.default_rng(3)
    validation = []
    for i in range(150):
        label = LABELS[i % 3]
        # A third of the rows use the words of another label: the cheap tier gets them wrong.
        source = LABELS[(i + 1) % 3] if i % 9 < 3 else label
        text = " ".join(rng.permutation(words[source].split())[:3]) + (" zzz qqq" if source != label else "")
        validation.append(Tweet(i, text, label))
    proba = tfidf.predict_proba([t.text for t in validation])
    subset = list(range(0, 150, 2))
    report = router.build(tmp_path, tfidf, validation, proba, subset, np.eye(3)[[LABELS.index(validation[i].label)
                                                                                  for i in subset]],
                          {"C": 1.0, "folds": 3, "seed": 0}, tolerance=0.0)
    assert (tmp_path / router.ROUTER_MODEL).is_file()
    metrics = report["metrics"]
    assert 0.3 <= report["threshold"] <= 1.0 and metrics["cheap_error_rate"] > 0.2
    # Out of vocabulary words mark the errors here; the router sees them, the confidence cannot.
    assert metrics["auc_router"] > metrics["auc_confidence"]
    assert set(metrics["coefficients"]) == set(router.FEATURES)


def test_prepared_router_keeps_the_label_and_rescores_confidence(data_dir: Path) -> None:
    from modelweave.apps.triage.sentiment import TfidfSentiment

    manifest = art.read_manifest(art.artifacts_dir(data_dir))
    assert router.ROUTER_MODEL in manifest["artifacts"]
    assert 0.3 <= manifest["calibration"]["router_threshold"] <= 1.0
    assert 0.0 <= manifest["validation"]["router"]["auc_router"] <= 1.0

    cheap = TfidfSentiment(data_dir=str(data_dir))
    cheap.load()
    learned = router.LearnedRouter(data_dir=str(data_dir))
    with pytest.raises(FailedPrecondition, match="before load"):
        learned.predict([message_from_text("hello")])
    learned.load()
    texts = ["I love this, thank you!", "where is my parcel", "Mi pedido no ha llegado todavía."]
    batch = [message_from_text(t) for t in texts]
    for m, c in zip(batch, cheap.predict(batch), strict=True):
        m.classification.CopyFrom(c)
    batch[2].text.language, batch[2].text.language_score = "es", 0.99
    out = learned.predict(batch)
    assert learned.predict([]) == []
    for m, c in zip(batch, out, strict=True):
        assert c.label == m.classification.label and list(c.scores) == list(m.classification.scores)
        assert 0.0 <= c.confidence <= 1.0 and c.model == "tfidf-lr+router"
    bare = message_from_text("no scores")
    bare.classification.CopyFrom(pb.Classification(label="positive", confidence=0.9))
    with pytest.raises(FailedPrecondition, match="classification.scores"):
        learned.predict([bare])


def test_learned_router_graph_checks() -> None:
    from modelweave.checker import check_graph
    from modelweave.spec import load_graph

    repo = Path(__file__).resolve().parents[3]
    graph = check_graph(load_graph(repo / "examples" / "evolution" / "4-learned-router.yaml"))
    assert graph.models["router"].impl == "modelweave.apps.triage.models:LearnedRouter"
