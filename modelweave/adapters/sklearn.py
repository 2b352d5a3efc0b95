"""scikit-learn classifiers loaded with joblib: text pipelines or heads on embeddings.

The estimator must implement ``predict_proba`` and expose ``classes_`` (a fitted
``Pipeline`` of a vectoriser and a classifier, or a classifier trained on
embedding vectors). The adapter returns the full label distribution, optionally
sharpened or flattened with a temperature fitted on held-out data, so a
downstream router can trust ``Classification.confidence``.

joblib files are pickles: load them only from locations you trust.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelweave.adapters.base import ModelAdapter
from modelweave.adapters.onnx import resolve_path
from modelweave.adapters.sklearn_direct import direct_predict_proba
from modelweave.errors import FailedPrecondition, InvalidArgument
from modelweave.v1 import messages_pb2 as pb

if TYPE_CHECKING:
    import numpy as np


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Rescales probability rows as ``softmax(log(p) / T)``.

    For a softmax model (multinomial logistic regression) this equals dividing the
    logits by ``T``: ``T > 1`` softens over-confident outputs, ``T < 1`` sharpens.
    """
    import numpy as np

    if temperature == 1.0:
        return proba
    logits = np.log(np.clip(proba, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    expd = np.exp(logits)
    return expd / expd.sum(axis=1, keepdims=True)


def classification_from_proba(labels: Sequence[str], proba: Sequence[float], model: str) -> pb.Classification:
    """Builds a ``Classification`` holding the argmax label and the full distribution.

    Scores are listed best first.
    """
    ranked = sorted(zip(labels, (float(p) for p in proba), strict=True), key=lambda kv: -kv[1])
    return pb.Classification(
        label=ranked[0][0],
        confidence=ranked[0][1],
        scores=[pb.LabelScore(label=label, score=score) for label, score in ranked],
        model=model,
    )


class SklearnParams(BaseModel):
    """Parameters of :class:`SklearnClassifier`.

    Attributes:
        model_path: joblib file of a fitted estimator with ``predict_proba``
            (path or ``pkg:module/file``).
        input: ``Text`` feeds ``Text.content`` strings (a text pipeline);
            ``Embedding`` feeds ``Embedding.values`` rows (a head on vectors).
        labels: Display names replacing ``classes_`` (same order).
        temperature: Probability temperature (see :func:`apply_temperature`).
        embedding_model: When set with ``input: Embedding``, reject vectors whose
            ``Embedding.model`` names another model (vectors of different models do
            not compare).
        model_name: Written to ``Classification.model``; the file stem when empty.
    """

    model_config = ConfigDict(extra="forbid")

    model_path: str
    input: Literal["Text", "Embedding"] = "Text"
    labels: list[str] | None = None
    temperature: float = Field(default=1.0, gt=0.0)
    embedding_model: str | None = None
    model_name: str = ""


class SklearnClassifier(ModelAdapter):
    """Text or Embedding -> Classification with a joblib-loaded scikit-learn model."""

    consumes = ("Text",)
    produces = "Classification"
    Params = SklearnParams

    @classmethod
    def signature(cls, params: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
        """The consumed part follows the ``input`` parameter."""
        return (cls.validate_params(params).input,), cls.produces

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._estimator: Any = None
        self._direct: Callable[[list[str]], Any] | None = None
        self.labels: list[str] = []
        self.model_name: str = self.params.model_name or Path(self.params.model_path).stem
        self.temperature: float = self.params.temperature

    def load(self) -> None:
        """Loads the estimator and checks it can produce probabilities.

        Raises:
            FailedPrecondition: when the file is missing or has no ``predict_proba``.
            InvalidArgument: when ``labels`` does not match the estimator's classes.
        """
        import joblib

        path = resolve_path(self.params.model_path)
        if not path.is_file():
            raise FailedPrecondition(f"{type(self).__name__}: model file {str(path)!r} does not exist")
        estimator = joblib.load(path)
        if not hasattr(estimator, "predict_proba") or not hasattr(estimator, "classes_"):
            raise FailedPrecondition(
                f"{type(self).__name__}: {type(estimator).__name__} in {str(path)!r} has no predict_proba/classes_"
            )
        classes = [str(c) for c in estimator.classes_]
        if self.params.labels is not None and len(self.params.labels) != len(classes):
            raise InvalidArgument(
                f"{type(self).__name__}: params.labels has {len(self.params.labels)} names, "
                f"the model has {len(classes)} classes {classes}"
            )
        self.labels = list(self.params.labels or classes)
        self._estimator = estimator
        # Text pipelines: TF-IDF -> logistic regression computed on each text's own features
        # (modelweave.adapters.sklearn_tfidf; probabilities within 1e-12 of predict_proba), else
        # the same fitted objects without scikit-learn's per-call checks when that gives identical
        # probabilities (modelweave.adapters.sklearn_direct), else predict_proba itself.
        from modelweave.adapters.sklearn_tfidf import compile_tfidf_linear  # numpy at import: load time only

        self._direct = (compile_tfidf_linear(estimator) or direct_predict_proba(estimator)
                        if self.params.input == "Text" else None)

    def predict_proba(self, inputs: Any) -> np.ndarray:
        """Temperature-scaled class probabilities for raw inputs (strings or a 2-D array)."""
        import numpy as np

        if self._estimator is None:
            raise FailedPrecondition(f"{type(self).__name__}.predict_proba called before load()")
        direct = self._direct if isinstance(inputs, list) else None
        proba = np.asarray(direct(inputs) if direct is not None else self._estimator.predict_proba(inputs),
                           dtype=np.float64)
        return apply_temperature(proba, self.temperature)

    def _inputs(self, batch: Sequence[pb.Message]) -> Any:
        import numpy as np

        if self.params.input == "Text":
            return [m.text.content for m in batch]
        expected = self.params.embedding_model
        for m in batch:
            if expected and m.embedding.model and m.embedding.model != expected:
                raise InvalidArgument(
                    f"{type(self).__name__}: embedding from {m.embedding.model!r}, expected {expected!r}"
                )
        # A client's wrong-sized vector is its mistake (400 naming the part), not a model crash (500).
        expected_size = getattr(self._estimator, "n_features_in_", None)
        for m in batch:
            size = len(m.embedding.values)
            if size == 0 or (expected_size is not None and size != int(expected_size)):
                wanted = f"{int(expected_size)} values" if expected_size is not None else "values"
                raise InvalidArgument(f"embedding.values has {size} values; model {self.model_name!r} "
                                      f"expects {wanted}")
        sizes = {len(m.embedding.values) for m in batch}
        if len(sizes) != 1:
            raise InvalidArgument(f"{type(self).__name__}: embeddings of sizes {sorted(sizes)} in one batch")
        return np.array([m.embedding.values for m in batch], dtype=np.float32)

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Classification]:
        """Classifies each envelope and returns the full distribution."""
        if not batch:
            return []
        proba = self.predict_proba(self._inputs(batch))
        return [classification_from_proba(self.labels, row, self.model_name) for row in proba]

    def health(self) -> None:
        """Raises when the estimator is not loaded."""
        if self._estimator is None:
            raise FailedPrecondition(f"{type(self).__name__} is not loaded")
