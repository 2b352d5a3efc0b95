"""The three sentiment tiers on real (small) artifacts, scored on held-out test tweets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelweave.apps.triage import data
from modelweave.apps.triage.models import MiniLMSentiment, TfidfSentiment, VaderSentiment
from modelweave.apps.triage.sentiment import vader_distribution
from modelweave.codecs import message_from_text
from modelweave.v1 import messages_pb2 as pb

N_TEST = 200

@pytest.fixture(scope="module")
def test_tweets() -> list[data.Tweet]:
    return data.tweets("test", N_TEST)


def _accuracy(outputs: list[pb.Classification], tweets: list[data.Tweet]) -> float:
    return float(np.mean([o.label == t.label for o, t in zip(outputs, tweets, strict=True)]))


def _check_distribution(c: pb.Classification) -> None:
    assert [s.label for s in c.scores][0] == c.label
    assert {s.label for s in c.scores} == set(data.LABELS)
    assert sum(s.score for s in c.scores) == pytest.approx(1.0, abs=1e-4)


def test_vader(test_tweets: list[data.Tweet]) -> None:
    model = VaderSentiment()
    model.load()
    texts = ["I love it, wonderful service!", "Terrible, I hate this.", "The box is blue."]
    clear = model.predict([message_from_text(t) for t in texts])
    assert [c.label for c in clear] == ["positive", "negative", "neutral"]
    out = model.predict([message_from_text(t.text) for t in test_tweets])
    for c in out:
        _check_distribution(c)
    # Full test split: .462; 300-tweet subset: .447. Chance level is 1/3.
    assert _accuracy(out, test_tweets) > 0.38


def test_vader_distribution_keeps_the_rule_label() -> None:
    for compound in (-0.9, -0.06, -0.01, 0.0, 0.04, 0.2, 1.0):
        dist = vader_distribution(compound, 0.05)
        assert sum(dist) == pytest.approx(1.0)
        expected = "positive" if compound >= 0.05 else "negative" if compound <= -0.05 else "neutral"
        assert data.LABELS[int(np.argmax(dist))] == expected


def test_tfidf_is_calibrated_and_accurate(data_dir: Path, test_tweets: list[data.Tweet]) -> None:
    model = TfidfSentiment(data_dir=str(data_dir))
    model.load()
    out = model.predict([message_from_text(t.text) for t in test_tweets])
    for c in out:
        _check_distribution(c)
        assert c.model == "tfidf-lr"
    # Measured .677 on the 300-tweet test subset with 300 training tweets (full data: .764).
    assert _accuracy(out, test_tweets) > 0.58
    confident = [o.label == t.label for o, t in zip(out, test_tweets, strict=True) if o.confidence >= 0.6]
    unsure = [o.label == t.label for o, t in zip(out, test_tweets, strict=True) if o.confidence < 0.45]
    assert confident and unsure and np.mean(confident) > np.mean(unsure)  # confidence is a routing signal


def test_support_tier_learns_the_support_register(data_dir: Path, test_tweets: list[data.Tweet]) -> None:
    # The session's prepare() trains on 300 of the 435 development messages (conftest LIMIT); the
    # other 135 are unseen by both tiers, so they measure what the adaptation buys out of domain.
    seen = {m.message_id for m in data.support_dev(300)}
    unseen = [m for m in data.support_dev() if m.message_id not in seen]
    tweets_tier = TfidfSentiment(data_dir=str(data_dir))
    support_tier = TfidfSentiment(data_dir=str(data_dir), domain="support")
    tweets_tier.load()
    support_tier.load()
    msgs = [message_from_text(m.text) for m in unseen]
    by_tweets, by_support = tweets_tier.predict(msgs), support_tier.predict(msgs)
    assert len(unseen) == 135 and {c.model for c in by_support} == {"tfidf-lr-support"}
    for c in by_support:
        _check_distribution(c)
    gold = [m.label for m in unseen]
    tweets_acc = np.mean([c.label == g for c, g in zip(by_tweets, gold, strict=True)])
    support_acc = np.mean([c.label == g for c, g in zip(by_support, gold, strict=True)])
    # Measured: tweets-only tier .504, support tier .756 (300 tweets + 300 messages of training).
    assert support_acc > tweets_acc + 0.1
    # Tweets still count: on the 200 held-out test tweets the support tier scored .675 (tweets-only
    # tier .705); with all 25.9k training tweets the two are within 0.1 point (manifest).
    assert _accuracy(support_tier.predict([message_from_text(t.text) for t in test_tweets]), test_tweets) > 0.58


def test_tfidf_domain_is_validated() -> None:
    from modelweave.errors import GraphSpecError

    with pytest.raises(GraphSpecError, match="TfidfSentiment: params.domain: Input should be 'tweets' or 'support'"):
        TfidfSentiment(domain="legal")


def test_minilm_tiers(data_dir: Path, test_tweets: list[data.Tweet]) -> None:
    head = MiniLMSentiment(data_dir=str(data_dir), ensemble=False, threads=2)
    ensemble = MiniLMSentiment(data_dir=str(data_dir))
    head.load()
    ensemble.load()
    msgs = [message_from_text(t.text) for t in test_tweets]
    out_head, out_ens = head.predict(msgs), ensemble.predict(msgs)
    assert out_head[0].model == "minilm-lr" and out_ens[0].model == "minilm-lr+tfidf"
    for c in out_ens:
        _check_distribution(c)
    # Measured on 300 test tweets (300 training tweets): head .680, ensemble .690.
    assert _accuracy(out_head, test_tweets) > 0.58
    assert _accuracy(out_ens, test_tweets) > 0.60
    assert 0.0 <= ensemble.weight <= 1.0
    assert head.predict([]) == []
