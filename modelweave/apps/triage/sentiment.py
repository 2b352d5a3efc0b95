"""Three sentiment tiers of the triage app (labels: negative, neutral, positive).

- :class:`VaderSentiment`: lexicon rules, no training, ~0.05 ms (weak: ~.46 accuracy).
- :class:`TfidfSentiment`: TF-IDF + logistic regression, temperature-calibrated, ~0.5 ms.
- :class:`MiniLMSentiment`: int8 MiniLM embedding + logistic-regression head, by
  default averaged with the TF-IDF model (the best single tier), ~10 ms.
- :class:`FineTunedSentiment`: MiniLM-L6 fine-tuned on the training tweets (int8 ONNX,
  built by ``prepare()`` with :mod:`.finetune`; serving needs no torch).

The calibrated confidence of :class:`TfidfSentiment` is the routing signal of the
cascade; its threshold is in the manifest (``cascade_threshold``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelweave.adapters.base import ModelAdapter
from modelweave.adapters.sklearn import SklearnClassifier, classification_from_proba
from modelweave.apps.triage import artifacts as art
from modelweave.apps.triage.data import LABELS
from modelweave.errors import FailedPrecondition
from modelweave.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


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
        domain: ``tweets``: trained on the training tweets alone. ``support``: also on the
            support development set (``assets/support_dev.csv``), for customer-support traffic
            (``prepare.RECIPE["support"]``).
    """

    temperature: float | None = Field(default=None, gt=0.0)
    domain: Literal["tweets", "support"] = "tweets"


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
        support = self.params.domain == "support"
        temperature = self.params.temperature or arts.calibration(
            "tfidf_support_temperature" if support else "tfidf_temperature"
        )
        self._classifier = SklearnClassifier(
            model_path=str(arts.path(art.TFIDF_SUPPORT_MODEL if support else art.TFIDF_MODEL)),
            temperature=temperature,
            model_name="tfidf-lr-support" if support else "tfidf-lr",
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


class _EncoderSentiment(ModelAdapter):
    """Text -> Classification from an encoder's probabilities, optionally averaged with TF-IDF's.

    Subclasses load ``self._tfidf`` and ``self.weight`` for the ensemble and implement
    :meth:`_encoder_proba` and :attr:`model_name`.
    """

    consumes = ("Text",)
    produces = "Classification"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._tfidf: TfidfSentiment | None = None
        self.weight = 0.0

    @property
    def model_name(self) -> str:
        """Reported in ``Classification.model``."""
        raise NotImplementedError

    def _ready(self) -> bool:
        """True once ``load()`` has run."""
        raise NotImplementedError

    def _encoder_proba(self, texts: list[str]) -> np.ndarray:
        """The encoder's probabilities ``[len(texts), 3]`` (only called when ready)."""
        raise NotImplementedError

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities ``[len(texts), 3]`` in :data:`LABELS` order."""
        if not self._ready():
            raise FailedPrecondition(f"{type(self).__name__} used before load()")
        proba = self._encoder_proba(list(texts))
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
        if not self._ready():
            raise FailedPrecondition(f"{type(self).__name__} is not loaded")


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


class MiniLMSentiment(_EncoderSentiment):
    """Text -> Classification: MiniLM int8 embedding + LR head (+ TF-IDF average)."""

    Params = MiniLMParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._embedder: Any = None
        self._head: SklearnClassifier | None = None

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

    def _ready(self) -> bool:
        return self._head is not None

    def _encoder_proba(self, texts: list[str]) -> np.ndarray:
        assert self._head is not None
        return self._head.predict_proba(self._embedder.embed(texts))


class FineTunedParams(art.TriageParams):
    """Parameters of :class:`FineTunedSentiment`.

    Attributes:
        ensemble: Average with the TF-IDF model (weight ``finetuned_ensemble_weight``,
            calibrated on validation).
        weight: Override of the TF-IDF weight in the average.
        temperature: Override of the calibrated temperature.
        threads: ONNX Runtime threads.
        batch_size: Texts per ONNX run (sorted by length, so each run pads little); default
            :func:`texts_per_run` of the built model's precision. More than one text per run
            of an int8 model makes a text's label depend on the others in its run.
    """

    ensemble: bool = False
    weight: float | None = Field(default=None, ge=0.0, le=1.0)
    temperature: float | None = Field(default=None, gt=0.0)
    threads: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1, le=1024)


#: Texts per ONNX run of the fine-tuned classifier, by the precision ``prepare`` kept. The int8
#: graph quantises its activations dynamically with one scale over the whole input tensor, so
#: in a run of several texts each text's logits move with its run-mates (11 of 300 held-out
#: tweets got another label alone than in a run of 64): one text per run is the only way a
#: text gets the same answer online, in a batch job and in a local run, and on 2 cores it is
#: also the cheapest (4.24 ms per text, against 4.89 in runs of 16). fp32 has no per-run scale
#: (the fp32 MiniLM embedder gives byte-identical vectors at any run size), so it keeps runs of 16.
TEXTS_PER_RUN: dict[str, int] = {"int8": 1, "fp32": 16}


def texts_per_run(precision: str) -> int:
    """Texts per ONNX run for a fine-tuned model of ``precision`` (``int8`` or ``fp32``), see
    :data:`TEXTS_PER_RUN`. ``prepare`` calibrates and ``devset_cv`` scores with the same rule.

    Raises:
        ValueError: an unknown precision.
    """
    if precision not in TEXTS_PER_RUN:
        raise ValueError(f"unknown fine-tuned model precision {precision!r}; expected one of {sorted(TEXTS_PER_RUN)}")
    return TEXTS_PER_RUN[precision]


class OnnxLogits:
    """Runs a fine-tuned classifier exported by :mod:`.finetune` (``input_ids``,
    ``attention_mask`` -> ``logits``) with ONNX Runtime and the vendored tokenizer. No torch.

    Args:
        model_path: The ``.onnx`` file.
        max_length: Truncation length used in training.
        threads: ONNX Runtime intra-op threads (runtime default when None).
        batch_size: Texts per run.
    """

    def __init__(self, model_path: Path, max_length: int, threads: int | None = None, batch_size: int = 16) -> None:
        self.model_path, self.max_length, self.threads, self.batch_size = model_path, max_length, threads, batch_size
        self._session: Any = None
        self._tokenizer: Any = None

    def load(self) -> None:
        """Opens the session and the tokenizer (dynamic padding to each chunk's longest text)."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if not self.model_path.is_file():
            raise FailedPrecondition(f"fine-tuned model {str(self.model_path)!r} does not exist; run prepare")
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        self._session = ort.InferenceSession(str(self.model_path), options, providers=["CPUExecutionProvider"])
        tokenizer = Tokenizer.from_file(art.TOKENIZER)
        tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]") or 0)
        tokenizer.enable_truncation(max_length=self.max_length)
        self._tokenizer = tokenizer

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Logits ``[len(texts), 3]`` in input order."""
        import numpy as np

        if self._session is None:
            raise FailedPrecondition("OnnxLogits used before load()")
        out = np.zeros((len(texts), len(LABELS)), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self._tokenizer.encode_batch([texts[i] or " " for i in idx])
            feeds = {
                "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            }
            out[idx] = self._session.run(["logits"], feeds)[0]
        return out

    def proba(self, texts: Sequence[str], temperature: float = 1.0) -> np.ndarray:
        """``softmax(logits / temperature)``."""
        import numpy as np

        z = self.logits(texts) / temperature
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


class FineTunedSentiment(_EncoderSentiment):
    """Text -> Classification: MiniLM-L6 fine-tuned on the training tweets, as ONNX (int8 where it
    kept validation accuracy), with a validation-calibrated temperature (+ optional TF-IDF average)."""

    idempotent = True
    Params = FineTunedParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._model: OnnxLogits | None = None
        self.temperature = 1.0

    def load(self) -> None:
        """Loads the ONNX model built by ``prepare()`` and (for the ensemble) the TF-IDF model."""
        arts = art.Artifacts(self.params.data_dir)
        if art.FINETUNED_MODEL not in arts.manifest.get("artifacts", {}):
            raise FailedPrecondition(f"FineTunedSentiment: {arts.directory} has no fine-tuned model; run prepare")
        p = self.params
        self.temperature = p.temperature or arts.calibration("finetuned_temperature")
        section = arts.manifest["finetune"]
        precision = str(section["precision"])
        served = texts_per_run(precision)
        per_run = p.batch_size or served
        if per_run > served:
            log.warning("FineTunedSentiment: batch_size %d on the %s model: a text's label can depend on the "
                        "others in its ONNX run, so batch, online and local answers may differ", per_run, precision)
        self._model = OnnxLogits(arts.path(art.FINETUNED_MODEL), int(section["max_length"]), p.threads, per_run)
        self._model.load()
        if p.ensemble:
            self._tfidf = TfidfSentiment(data_dir=p.data_dir)
            self._tfidf.load()
            self.weight = p.weight if p.weight is not None else arts.calibration("finetuned_ensemble_weight")

    @property
    def model_name(self) -> str:
        """``minilm-ft`` or ``minilm-ft+tfidf``."""
        return "minilm-ft+tfidf" if self.params.ensemble else "minilm-ft"

    def _ready(self) -> bool:
        return self._model is not None

    def _encoder_proba(self, texts: list[str]) -> np.ndarray:
        assert self._model is not None
        return self._model.proba(texts, self.temperature)


__all__ = [
    "FineTunedSentiment",
    "MiniLMSentiment",
    "OnnxLogits",
    "TfidfSentiment",
    "VaderSentiment",
    "vader_distribution",
]
