"""Calibration on the validation split: temperatures, ensemble weight, thresholds.

All functions are deterministic grid searches over small numpy arrays, so their
choices are reproducible and easy to explain in the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from modelweave.adapters.sklearn import apply_temperature

if TYPE_CHECKING:
    import numpy as np

#: A cascade threshold may cost at most this much validation accuracy versus
#: escalating everything; the smallest such threshold wins (fewest escalations).
CASCADE_TOLERANCE = 0.003

#: The cheap tier's ensemble weights :func:`fit_ensemble_weight` tries: 0.00, 0.05, .. 1.00.
ENSEMBLE_WEIGHTS: tuple[float, ...] = tuple(round(i * 0.05, 2) for i in range(21))


def label_indices(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Maps label strings to column indices of ``classes``."""
    import numpy as np

    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[label] for label in labels], dtype=np.int64)


def nll(proba: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    import numpy as np

    return float(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0)).mean())


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> float:
    """The temperature in [0.25, 4] minimising validation NLL (temperature scaling)."""
    import numpy as np

    grid = np.exp(np.linspace(np.log(0.25), np.log(4.0), 81))
    losses = [nll(apply_temperature(proba, float(t)), y) for t in grid]
    return float(grid[int(np.argmin(losses))])


def accuracy(proba: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of probability rows."""
    return float((proba.argmax(axis=1) == y).mean())


def fit_ensemble_weight(cheap: np.ndarray, expensive: np.ndarray, y: np.ndarray) -> float:
    """Weight ``w`` of ``w * cheap + (1 - w) * expensive`` maximising validation accuracy.

    Ties go to the weight nearest 0.5 (the plain average), which generalises best.
    """
    scores = [(accuracy(w * cheap + (1 - w) * expensive, y), -abs(w - 0.5), w) for w in ENSEMBLE_WEIGHTS]
    return max(scores)[2]


def escalation_curve(keep_score: np.ndarray, cheap: np.ndarray, final: np.ndarray, y: np.ndarray
                     ) -> list[tuple[float, float, float]]:
    """``(threshold, accuracy, escalated fraction)`` for thresholds 0.30 .. 1.00.

    An item is escalated (answered by ``final``) when ``keep_score`` (what the route reads:
    the cheap model's confidence, or a learned router's probability that the cheap label is
    right) is below the threshold; otherwise the cheap answer stands.
    """
    import numpy as np

    cheap_pred, final_pred = cheap.argmax(axis=1), final.argmax(axis=1)
    curve = []
    for t in np.round(np.arange(0.30, 1.0001, 0.01), 2):
        escalate = keep_score < t
        pred = np.where(escalate, final_pred, cheap_pred)
        curve.append((float(t), float((pred == y).mean()), float(escalate.mean())))
    return curve


def cascade_curve(cheap: np.ndarray, final: np.ndarray, y: np.ndarray) -> list[tuple[float, float, float]]:
    """:func:`escalation_curve` of the plain cascade: escalate when the cheap model's top probability is low."""
    return escalation_curve(cheap.max(axis=1), cheap, final, y)


def threshold_within(points: list[tuple[float, float, float]], tolerance: float) -> float:
    """Smallest threshold of a curve whose accuracy is within ``tolerance`` of the best (the cascade's rule)."""
    best = max(acc for _, acc, _ in points)
    return min(t for t, acc, _ in points if acc >= best - tolerance)


def choose_cascade_threshold(cheap: np.ndarray, final: np.ndarray, y: np.ndarray) -> float:
    """Smallest threshold whose validation accuracy is within :data:`CASCADE_TOLERANCE` of the best."""
    return threshold_within(cascade_curve(cheap, final, y), CASCADE_TOLERANCE)


def youden_threshold(positives: np.ndarray, negatives: np.ndarray) -> tuple[float, float, float]:
    """Threshold maximising TPR - FPR between two score samples.

    Returns:
        ``(threshold, tpr, fpr)``: scores ``>= threshold`` count as positive.
    """
    import numpy as np

    candidates = np.unique(np.concatenate([positives, negatives]))
    best = (-1.0, 0.0, 0.0, 0.0)
    for t in candidates:
        tpr = float((positives >= t).mean())
        fpr = float((negatives >= t).mean())
        if tpr - fpr > best[0]:
            best = (tpr - fpr, float(t), tpr, fpr)
    return best[1], best[2], best[3]


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of per-class F1 (classes absent from both count as 0)."""
    scores = []
    for c in range(n_classes):
        tp = float(((y_pred == c) & (y_true == c)).sum())
        fp = float(((y_pred == c) & (y_true != c)).sum())
        fn = float(((y_pred != c) & (y_true == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / n_classes
