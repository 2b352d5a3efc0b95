"""Out-of-fold study of the triage sentiment cascade on the support development set.

The support development set (``assets/support_dev.csv``, 435 messages) is training data, so
anything chosen for support traffic (the escalation cap, the ensemble's weights) must be read
off predictions of models that did not see the message: ``k``-fold out-of-fold predictions of
both tiers, each retrained per fold exactly as ``prepare`` trains it (the ``support`` TF-IDF tier
on the training tweets + the other folds weighted ``RECIPE["support"]["weight"]``; MiniLM
fine-tuned on the 8k head tweets + the other folds repeated ``support_repeats`` times, exported
to int8 ONNX and scored through the serving class). The out-of-domain test set
(``examples/data/support_messages.csv``) is never read here.

Fine-tuning dominates (~4 min per fold on 2 cores), so each fold's predictions are cached in
``<data_dir>/triage-devset-cv/`` under a key of everything they depend on; an interrupted run
resumes and a finished one reports at once.

``python -m modelweave.apps.triage.devset_cv [--folds 5] [--data-dir DIR]`` prints the tiers'
out-of-fold accuracy, the ensemble weight sweep and the cascade curve (confidence threshold
plus the non-English rule, as the graph routes) with the rules ``prepare`` applies on
validation: :func:`.calibration.fit_ensemble_weight` and :func:`.calibration.threshold_within`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelweave.apps.triage import calibration as cal
from modelweave.apps.triage import data


def fold_of(messages: Sequence[data.SupportMessage], folds: int) -> np.ndarray:
    """Fold index per message: rank by the keyed text hash, dealt round-robin (balanced, seeded).

    Args:
        messages: The development set.
        folds: Number of folds (>= 2).

    Raises:
        ValueError: ``folds`` < 2 or more folds than messages.
    """
    if folds < 2 or folds > len(messages):
        raise ValueError(f"folds must be in [2, {len(messages)}], got {folds}")
    order = sorted(range(len(messages)), key=lambda i: data.order_key(messages[i].text))
    assignment = np.empty(len(messages), dtype=np.int64)
    for rank, i in enumerate(order):
        assignment[i] = rank % folds
    return assignment


@dataclass(frozen=True)
class OutOfFold:
    """Calibrated out-of-fold probabilities of both tiers on the development set.

    Attributes:
        cheap: ``(n, classes)`` support TF-IDF tier probabilities (its served temperature).
        expensive: ``(n, classes)`` fine-tuned MiniLM probabilities (its served temperature).
        y: Label indices into :data:`.data.LABELS`.
        english: True where the message is English (the route escalates the others).
    """

    cheap: np.ndarray
    expensive: np.ndarray
    y: np.ndarray
    english: np.ndarray


def cascade_points(oof: OutOfFold, cheap_weight: float) -> list[tuple[float, float, float]]:
    """``(threshold, accuracy, escalated)`` of the graph's route over thresholds 0.30 .. 1.00.

    A message is escalated when the cheap tier's confidence is below the threshold or it is not
    English (as ``escalate`` in ``examples/triage.yaml``); an escalated message is answered by
    ``cheap_weight * cheap + (1 - cheap_weight) * expensive``.
    """
    final = cheap_weight * oof.cheap + (1 - cheap_weight) * oof.expensive
    keep_score = np.where(oof.english, oof.cheap.max(axis=1), -1.0)
    return cal.escalation_curve(keep_score, oof.cheap, final, oof.y)


def report(oof: OutOfFold, current_weight: float, current_cap: float) -> dict[str, Any]:
    """The numbers a support-traffic choice is made from, and the choices ``prepare``'s rules give.

    Args:
        oof: Out-of-fold predictions.
        current_weight: The graph's TF-IDF weight in the ensemble now (for comparison).
        current_cap: The route threshold's cap now (for comparison).

    Returns:
        Accuracies of each tier, the ensemble per weight, the rule's weight, and the cascade
        (accuracy, escalated) at the rule's cap for the current and the chosen weight.
    """
    weight = cal.fit_ensemble_weight(oof.cheap, oof.expensive, oof.y)
    result: dict[str, Any] = {
        "messages": len(oof.y),
        "cheap_accuracy": cal.accuracy(oof.cheap, oof.y),
        "expensive_accuracy": cal.accuracy(oof.expensive, oof.y),
        "ensemble_accuracy_by_weight": {
            w: cal.accuracy(w * oof.cheap + (1 - w) * oof.expensive, oof.y) for w in cal.ENSEMBLE_WEIGHTS
        },
        "chosen_weight": weight,
    }
    for name, w in (("current", current_weight), ("chosen", weight)):
        points = cascade_points(oof, w)
        cap = cal.threshold_within(points, cal.CASCADE_TOLERANCE)
        at = {t: (a, e) for t, a, e in points}
        result[name] = {
            "weight": w, "rule_cap": cap, "at_rule_cap": at[cap],
            "at_current_cap": at[round(current_cap, 2)], "best": max(a for _, a, _ in points),
        }
    return result


def cache_key(recipe: dict[str, Any], folds: int, train_size: int) -> str:
    """Hash of everything the out-of-fold predictions depend on (recipes, data, base model)."""
    from modelweave.apps.triage import finetune

    inputs = {
        "folds": folds, "tfidf": recipe["tfidf"], "support": recipe["support"],
        "finetune": finetune.cache_inputs(recipe["finetune"], None, train_size),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _fold_predictions(recipe: dict[str, Any], train: list[data.Tweet], head_train: list[data.Tweet],
                      fit: list[data.SupportMessage], held: list[data.SupportMessage],
                      progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Raw probabilities of both tiers, trained without ``held``, on ``held`` (label order: LABELS)."""
    from modelweave.apps.triage import finetune, tfidf_training
    from modelweave.apps.triage.sentiment import OnnxLogits

    texts = [m.text for m in held]
    with tempfile.TemporaryDirectory(prefix="devset-cv-") as scratch:
        # One validation tweet only because train_tier scores some; nothing here reads it.
        tier, _ = tfidf_training.train_tier(
            Path(scratch) / "tfidf.joblib", recipe["tfidf"], train, train[:1], fit, float(recipe["support"]["weight"])
        )
        if [str(c) for c in tier.classes_] != list(data.LABELS):
            raise RuntimeError(f"TF-IDF classes {list(tier.classes_)} != {list(data.LABELS)}")
        cheap = tier.predict_proba(texts)
        tuned = recipe["finetune"]
        model = finetune.train(*finetune.training_rows(head_train, fit, tuned["support_repeats"]), tuned,
                               progress=progress)
        fp32, int8 = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        finetune.export_onnx(model, fp32)
        # prepare keeps int8 (manifest "precision"); the fold models are scored the same way.
        finetune.quantize_int8(fp32, int8)
        onnx = OnnxLogits(int8, tuned["max_length"], threads=finetune.train_threads(),
                          batch_size=tuned["texts_per_run"]["int8"])
        onnx.load()
        expensive = onnx.proba(texts)
    return cheap, expensive


def out_of_fold(data_dir: Path | None, folds: int = 5, progress: bool = True) -> OutOfFold:
    """Trains both tiers once per fold (cached per fold) and returns calibrated out-of-fold predictions.

    Temperatures are the served ones (the manifest's, fitted on validation tweets), so the
    probabilities are what the graph's route and ``mean`` aggregate would see.
    """
    from modelweave.adapters.sklearn import apply_temperature
    from modelweave.apps.triage import artifacts as art
    from modelweave.apps.triage.prepare import RECIPE

    # The served temperatures: read first, so an unprepared directory fails before ~20 minutes of training.
    directory = art.artifacts_dir(data_dir)
    manifest = art.read_manifest(directory)["calibration"]
    messages = data.support_dev()
    assignment = fold_of(messages, folds)
    train = data.tweets("train")
    head_train = sorted(train, key=lambda t: data.order_key(t.text))[: RECIPE["head"]["train_size"]]
    key = cache_key(RECIPE, folds, RECIPE["head"]["train_size"])
    cache = directory.parent / "triage-devset-cv" / key
    cache.mkdir(parents=True, exist_ok=True)
    cheap = np.zeros((len(messages), len(data.LABELS)))
    expensive = np.zeros_like(cheap)
    for k in range(folds):
        path = cache / f"fold{k}.npz"
        held_idx = np.flatnonzero(assignment == k)
        if not path.is_file():
            fit = [m for m, f in zip(messages, assignment, strict=True) if f != k]
            held = [messages[i] for i in held_idx]
            c, e = _fold_predictions(RECIPE, train, head_train, fit, held, progress)
            np.savez(path, index=held_idx, cheap=c, expensive=e)
            print(json.dumps({"fold": k, "held_out": len(held)}), flush=True)
        saved = np.load(path)
        if not np.array_equal(saved["index"], held_idx):
            raise RuntimeError(f"{path}: cached fold rows differ from the current split; delete {cache}")
        cheap[held_idx], expensive[held_idx] = saved["cheap"], saved["expensive"]
    return OutOfFold(
        cheap=apply_temperature(cheap, manifest["tfidf_support_temperature"]),
        expensive=apply_temperature(expensive, manifest["finetuned_temperature"]),
        y=cal.label_indices([m.label for m in messages], data.LABELS),
        english=np.array([m.language == "en" for m in messages]),
    )


def main(argv: list[str] | None = None) -> None:
    """Command line: prints :func:`report` as JSON."""
    from modelweave.apps.triage.artifacts import default_data_dir

    parser = argparse.ArgumentParser(description="Out-of-fold study of the sentiment cascade on the support dev set.")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--current-weight", type=float, default=0.40, help="the graph's TF-IDF weight now")
    parser.add_argument("--current-cap", type=float, default=0.72, help="the route threshold's cap now")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    oof = out_of_fold(args.data_dir or default_data_dir(), args.folds, not args.no_progress)
    print(json.dumps(report(oof, args.current_weight, args.current_cap), indent=1))


if __name__ == "__main__":
    main()
