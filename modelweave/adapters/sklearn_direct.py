"""A direct call path through a fitted scikit-learn text pipeline, checked against it at load.

Why: for one short text, scikit-learn's own machinery costs more than the model does.
``Pipeline.predict_proba`` validates its parameters on every call, ``FeatureUnion`` runs its
transformers through joblib's ``Parallel`` even with one job, and every input check inspects
the input's type through ``narwhals``. On the triage graph's TF-IDF tier (word and character
TF-IDF, a logistic regression; one text per call, through the adapter) that was 1.40-1.47 ms
of CPU per call, and 0.96-0.97 ms on this path (benchmarks/PERFORMANCE_LOG.md).

The path calls the same fitted objects' own ``transform`` and ``predict_proba``, in the
pipeline's order, under ``sklearn.config_context(skip_parameter_validation=True,
assume_finite=True)``: parameters were validated when the pipeline was fitted, and TF-IDF
features of strings are always finite. Only plain shapes qualify (a ``Pipeline`` of
transformers and ``FeatureUnion`` steps without weights, dropped parts or pandas output, ending in
a classifier). :func:`direct_predict_proba` then runs both paths on probe texts and returns
the direct one only when its output is identical, so a pipeline it does not understand keeps
scikit-learn's own path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger("modelweave.adapters.sklearn")

#: Texts both paths must agree on before the direct one is used (empty, short, long, non-ASCII,
#: digits and punctuation: what changes tokenisation and the vocabulary hits).
PROBE_TEXTS: tuple[str, ...] = (
    "", "a", "ok", "Hello world!", "my parcel is late and broken, I want a refund for order 12345",
    "thanks, great support :) fast delivery", "très déçu, le colis est arrivé cassé 😡 #notcool",
    "where is my order??? " * 20,
)

Transform = Callable[[Any], Any]


def direct_predict_proba(estimator: Any, probes: Sequence[str] = PROBE_TEXTS) -> Callable[[list[str]], Any] | None:
    """``estimator.predict_proba`` for lists of strings, without scikit-learn's per-call checks.

    Args:
        estimator: A fitted estimator (usually a ``Pipeline``).
        probes: Texts on which both paths must give identical probabilities.

    Returns:
        The direct function, or None when the estimator's shape is not one this path handles
        or its output differs on a probe (then use ``estimator.predict_proba``).
    """
    plan = _plan(estimator)
    if plan is None:
        return None
    transforms, final = plan
    import numpy as np
    import sklearn  # imported here, not per call: predict_proba is on the request path

    def predict_proba(texts: list[str]) -> Any:
        with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
            features: Any = texts
            for transform in transforms:
                features = transform(features)
            return final.predict_proba(features)

    try:
        expected = np.asarray(estimator.predict_proba(list(probes)))
        got = np.asarray(predict_proba(list(probes)))
    except Exception:  # noqa: BLE001 - any failure means: keep scikit-learn's own path
        logger.debug("direct sklearn path failed on the probes; using predict_proba", exc_info=True)
        return None
    if got.shape != expected.shape or got.dtype != expected.dtype or not np.array_equal(got, expected):
        logger.debug("direct sklearn path differs from predict_proba on the probes; not used")
        return None
    return predict_proba


def _plan(estimator: Any) -> tuple[list[Transform], Any] | None:
    """(the transforms in order, the final classifier), or None for shapes this path does not handle."""
    from sklearn.pipeline import FeatureUnion, Pipeline

    if not isinstance(estimator, Pipeline) or getattr(estimator, "memory", None) is not None:
        return None
    steps = [step for _, step in estimator.steps]
    final = steps[-1]
    if not hasattr(final, "predict_proba") or _custom_output(estimator):
        return None
    transforms: list[Transform] = []
    for step in steps[:-1]:
        if isinstance(step, FeatureUnion):
            union = _union(step)
            if union is None:
                return None
            transforms.append(union)
        elif step is not None and step != "passthrough" and hasattr(step, "transform") and not _custom_output(step):
            transforms.append(step.transform)
        else:
            return None
    return transforms, final


def _union(union: Any) -> Transform | None:
    """``FeatureUnion.transform`` without joblib: each part's transform, stacked as it stacks them."""
    parts = [part for _, part in union.transformer_list]
    if union.transformer_weights or _custom_output(union) or any(
            part is None or isinstance(part, str) or not hasattr(part, "transform") or _custom_output(part)
            for part in parts):
        return None
    import numpy as np
    from scipy import sparse

    def transform(features: Any) -> Any:
        blocks = [part.transform(features) for part in parts]
        if any(sparse.issparse(block) for block in blocks):
            return sparse.hstack(blocks).tocsr()
        return np.hstack(blocks)

    return transform


def _custom_output(step: Any) -> bool:
    """Whether ``set_output`` asked this step for another container than arrays (e.g. pandas)."""
    config = getattr(step, "_sklearn_output_config", None) or {}
    return any(value not in (None, "default") for value in config.values())
