"""Learning-rate sweep of the fine-tuned tier, scored on the VALIDATION split (never test).

``python -m modelweave.apps.triage.finetune_sweep 3e-5,5e-5,1e-4 [--epochs N] [--validation-size N]``
fine-tunes once per learning rate with ``prepare.RECIPE["finetune"]`` otherwise, and prints the
validation accuracy (torch, fp32) of each. About 6-9 minutes per rate on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

from modelweave.apps.triage.finetune import torch_proba, train


def sweep(lrs: Sequence[float], recipe: dict[str, Any], train_size: int, n_val: int) -> list[dict[str, Any]]:
    """Validation accuracy (torch, fp32) of one fine-tune per learning rate; the test split is never read."""
    from modelweave.apps.triage import calibration as cal
    from modelweave.apps.triage import data

    train_rows = sorted(data.tweets("train"), key=lambda t: data.order_key(t.text))[:train_size]
    val_rows = sorted(data.tweets("validation"), key=lambda t: data.order_key(t.text))[:n_val]
    y_val = cal.label_indices([t.label for t in val_rows], data.LABELS)
    results = []
    for lr in lrs:
        started = time.perf_counter()
        labels = cal.label_indices([t.label for t in train_rows], data.LABELS).tolist()
        model = train([t.text for t in train_rows], labels, {**recipe, "lr": lr})
        proba = torch_proba(model, [t.text for t in val_rows], recipe["max_length"])
        results.append({"lr": lr, "validation_accuracy": cal.accuracy(proba, y_val),
                        "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(results[-1]), flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m modelweave.apps.triage.finetune_sweep LR,LR,...``."""
    from modelweave.apps.triage.prepare import RECIPE

    parser = argparse.ArgumentParser(description="Learning-rate sweep of the fine-tuned tier on validation.")
    parser.add_argument("rates", help="comma-separated learning rates")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--validation-size", type=int, default=RECIPE["validation_embed_size"])
    args = parser.parse_args(argv)
    recipe = dict(RECIPE["finetune"])
    if args.epochs:
        recipe["epochs"] = args.epochs
    sweep([float(x) for x in args.rates.split(",")], recipe, RECIPE["head"]["train_size"], args.validation_size)


if __name__ == "__main__":
    main()
