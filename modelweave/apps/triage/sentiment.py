"""Three sentiment tiers of the triage app (labels: negative, neutral, positive).

- :class:`VaderSentiment`: lexicon rules, no training, ~0.05 ms (weak: ~.46 accuracy).
- :class:`TfidfSentiment`: TF-IDF + logistic regression, temperature-calibrated, ~0.5 ms.
- :class:`MiniLMSentiment`: int8 MiniLM embedding + logistic-regression head, by
  default averaged with the TF-IDF model (the best single tier), ~10 ms.

The calibrated confidence of :class:`TfidfSentiment` is the routing signal of the
cascade; its threshold is in the manifest (``cascade_threshold``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from modelweave.adapters.base import ModelAdapter
from modelweave.adapters.sklearn import SklearnClassifier, classification_from_proba
from modelweave.apps.triage import artifacts as art
from modelweave.apps.triage.data import LABELS
from modelweave.errors import FailedPrecondition
from modelweave.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    import numpy as np


class VaderParams(BaseModel):
    """Parameters of :class:`VaderSentiment`.

    Attributes:
        neutral_band: ``|compound|`` below this is neutral (VADER's documented 0.05).
    """

    model_config = ConfigDict(extra="forbid")

    neutral_band: float = Field(default=0.05, gt=0.0, lt=1.0)


def vader_distribution(compound: float, band: float) -> list[float]:
    """Maps VADER's compound score to probabilities over :data:`LABELS`.

    The chosen label gets ``0.5 + |compound| / 2`` (negative/positive) or
    ``1 - |compound| / (2 * band)`` (neutral); the rest is split evenly, so the
    argmax is always VADER's own rule-based label.
    """
    magnitude = abs(compound)
    if compound >= band:
        label, top = "positive", 0.5 + magnitude / 2
    elif compound <= -band:
        label, top = "negative", 0.5 + magnitude / 2
    else:
        label, top = "neutral", 1.0 - magnitude / (2 * band)
    rest = (1.0 - top) / 2
    return [top if name == label else rest for name in LABELS]


class VaderSentiment(ModelAdapter):
    """Text -> Classification with the VADER lexicon (tier 0: no training)."""

    consumes = ("Text",)
    produces = "Classification"
    Params = VaderParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._analyzer: Any = None

    def load(self) -> None:
        """Loads the VADER lexicon shipped in the package."""
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Classification]:
        """Classifies each ``Text.content``."""
        if self._analyzer is None:
            raise FailedPrecondition("VaderSentiment.predict called before load()")
        band = self.params.neutral_band
        return [
            classification_from_proba(
                LABELS,
                vader_distribution(self._analyzer.polarity_scores(m.text.content)["compound"], band),
                "vader",
            )
            for m in batch
        ]


class TfidfParams(art.TriageParams):
    """Parameters of :class:`TfidfSentiment`.

    Attributes:
        temperature: Override of the calibrated probability temperature.
    """

    temperature: float | None = Field(default=None, gt=0.0)


class TfidfSentiment(ModelAdapter):
    """Text -> Classification: TF-IDF + logistic regression with calibrated confidence."""

    consumes = ("Text",)
    produces = "Classification"
    Params = TfidfParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._classifier: SklearnClassifier | None = None

    def load(self) -> None:
        """Loads the pipeline trained by ``prepare()`` and its temperature."""
        arts = art.Artifacts(self.params.data_dir)
        temperature = self.params.temperature or arts.calibration("tfidf_temperature")
        self._classifier = SklearnClassifier(
            model_path=str(arts.path(art.TFIDF_MODEL)), temperature=temperature, model_name="tfidf-lr"
        )
        self._classifier.load()

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Calibrated probabilities ``[len(texts), 3]`` in :data:`LABELS` order."""
        if self._classifier is None:
            raise FailedPrecondition("TfidfSentiment used before load()")
        return self._classifier.predict_proba(list(texts))

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Classification]:
        """Classifies each ``Text.content``."""
        if self._classifier is None:
            raise FailedPrecondition("TfidfSentiment.predict called before load()")
        return self._classifier.predict(batch)

    def health(self) -> None:
        """Raises when not loaded."""
        if self._classifier is None:
            raise FailedPrecondition("TfidfSentiment is not loaded")


class MiniLMParams(art.TriageParams):
    """Parameters of :class:`MiniLMSentiment`.

    Attributes:
        ensemble: Average with the TF-IDF model (weight calibrated on validation).
        weight: Override of the TF-IDF weight in the average.
        threads: ONNX Runtime threads.
    """

    ensemble: bool = True
    weight: float | None = Field(default=None, ge=0.0, le=1.0)
    threads: int | None = Field(default=None, ge=1)


class MiniLMSentiment(ModelAdapter):
    """Text -> Classification: MiniLM int8 embedding + LR head (+ TF-IDF average)."""

    consumes = ("Text",)
    produces = "Classification"
    Params = MiniLMParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._embedder: Any = None
        self._head: SklearnClassifier | None = None
        self._tfidf: TfidfSentiment | None = None
        self.weight = 0.0

    def load(self) -> None:
        """Loads the ONNX encoder, the head and (for the ensemble) the TF-IDF model."""
        arts = art.Artifacts(self.params.data_dir)
        self._embedder = art.minilm_embedder(self.params.threads)
        self._embedder.load()
        self._head = SklearnClassifier(
            model_path=str(arts.path(art.HEAD_MODEL)),
            input="Embedding",
            temperature=arts.calibration("head_temperature"),
            embedding_model=art.EMBEDDING_MODEL,
        )
        self._head.load()
        if self._head.labels != list(LABELS):
            raise FailedPrecondition(f"MiniLMSentiment: head classes {self._head.labels} != {list(LABELS)}")
        if self.params.ensemble:
            self._tfidf = TfidfSentiment(data_dir=self.params.data_dir)
            self._tfidf.load()
            w = self.params.weight
            self.weight = w if w is not None else arts.calibration("ensemble_weight")

    @property
    def model_name(self) -> str:
        """``minilm-lr`` or ``minilm-lr+tfidf``."""
        return "minilm-lr+tfidf" if self.params.ensemble else "minilm-lr"

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities ``[len(texts), 3]`` in :data:`LABELS` order."""
        if self._head is None:
            raise FailedPrecondition("MiniLMSentiment used before load()")
        proba = self._head.predict_proba(self._embedder.embed(list(texts)))
        if self._tfidf is not None:
            proba = self.weight * self._tfidf.predict_proba(texts) + (1.0 - self.weight) * proba
        return proba

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Classification]:
        """Classifies each ``Text.content``."""
        if not batch:
            return []
        proba = self.predict_proba([m.text.content for m in batch])
        return [classification_from_proba(LABELS, row, self.model_name) for row in proba]

    def health(self) -> None:
        """Raises when not loaded."""
        if self._head is None:
            raise FailedPrecondition("MiniLMSentiment is not loaded")


__all__ = [
    "MiniLMSentiment",
    "TfidfSentiment",
    "VaderSentiment",
    "vader_distribution",
]
