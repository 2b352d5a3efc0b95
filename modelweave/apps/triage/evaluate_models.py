"""Held-out evaluation of the triage models, in plain Python (no Ray).

Measures on the TEST split (never used for training or calibration):

- each sentiment tier and the cascade (TF-IDF first, escalate to MiniLM+TF-IDF when
  the calibrated TF-IDF confidence is below the validation-chosen threshold):
  accuracy, macro-F1, CPU ms per item (``time.process_time``, all threads),
  wall ms per item, escalated fraction, load time;
- answer retrieval (R@1 / R@5 for each ``match`` mode; test questions are removed
  from the question index so they cannot match themselves) and the grounding
  validator's true/false positive rates at its calibrated threshold.

Run ``python -m modelweave.apps.triage.evaluate_models --data-dir DIR``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from modelweave.apps.triage import artifacts as art
from modelweave.apps.triage import calibration as cal
from modelweave.apps.triage import data
from modelweave.codecs import message_from_text
from modelweave.v1 import messages_pb2 as pb


def _run(adapter: Any, envelopes: list[pb.Message], batch_size: int) -> tuple[list[pb.Classification], float, float]:
    """Runs ``adapter.predict`` in batches; returns outputs, CPU seconds and wall seconds."""
    outputs: list[pb.Classification] = []
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, len(envelopes), batch_size):
        outputs.extend(adapter.predict(envelopes[start : start + batch_size]))
    return outputs, time.process_time() - cpu, time.perf_counter() - wall


def _row(name: str, y: Any, pred: Any, cpu: float, wall: float, n: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": name,
        "accuracy": round(float((pred == y).mean()), 4),
        "macro_f1": round(cal.macro_f1(y, pred, len(data.LABELS)), 4),
        "cpu_ms_per_item": round(1000 * cpu / n, 3),
        "wall_ms_per_item": round(1000 * wall / n, 3),
        **extra,
    }


def evaluate_sentiment(data_dir: Path | None, limit: int | None = None, batch_size: int = 64) -> dict[str, Any]:
    """Evaluates every sentiment tier and the cascade on the test split."""
    import numpy as np

    from modelweave.apps.triage.sentiment import FineTunedSentiment, MiniLMSentiment, TfidfSentiment, VaderSentiment

    arts = art.Artifacts(data_dir)
    threshold = arts.calibration("cascade_threshold")
    test = data.tweets("test", limit)
    envelopes = [message_from_text(t.text) for t in test]
    y = cal.label_indices([t.label for t in test], data.LABELS)
    n = len(test)
    ddir = str(data_dir) if data_dir else None
    tiers = {
        "vader": VaderSentiment(),
        "tfidf-lr": TfidfSentiment(data_dir=ddir),
        "minilm-lr": MiniLMSentiment(data_dir=ddir, ensemble=False),
        "minilm-lr+tfidf": MiniLMSentiment(data_dir=ddir, ensemble=True),
        "minilm-ft": FineTunedSentiment(data_dir=ddir),
        "minilm-ft+tfidf": FineTunedSentiment(data_dir=ddir, ensemble=True),
    }
    rows, preds, conf = [], {}, {}
    for name, adapter in tiers.items():
        started = time.perf_counter()
        adapter.load()
        load_s = time.perf_counter() - started
        outputs, cpu, wall = _run(adapter, envelopes, batch_size)
        preds[name] = np.array([data.LABELS.index(o.label) for o in outputs])
        conf[name] = np.array([o.confidence for o in outputs])
        rows.append(_row(name, y, preds[name], cpu, wall, n, load_s=round(load_s, 2)))

    # The cascade as a graph would run it: the cheap tier on everything, the
    # expensive tier only on what the cheap tier is unsure about.
    cascades = (("minilm-lr+tfidf", threshold, "minilm+tfidf"),
                ("minilm-ft+tfidf", arts.calibration("finetuned_cascade_threshold"), "minilm-ft+tfidf"))
    for tier, limit_t, label in cascades:
        cheap, expensive = tiers["tfidf-lr"], tiers[tier]
        cheap_out, cpu1, wall1 = _run(cheap, envelopes, batch_size)
        escalate = np.array([o.confidence < limit_t for o in cheap_out])
        picked = [e for e, up in zip(envelopes, escalate, strict=True) if up]
        exp_out, cpu2, wall2 = _run(expensive, picked, batch_size)
        pred = np.array([data.LABELS.index(o.label) for o in cheap_out])
        pred[escalate] = [data.LABELS.index(o.label) for o in exp_out]
        rows.append(
            _row(
                f"cascade tfidf->{label} @{limit_t:.2f}",
                y,
                pred,
                cpu1 + cpu2,
                wall1 + wall2,
                n,
                escalated=round(float(escalate.mean()), 4),
            )
        )
    # Other thresholds, from the per-item predictions above (no extra model runs).
    curve = []
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        up = conf["tfidf-lr"] < t
        p = np.where(up, preds["minilm-lr+tfidf"], preds["tfidf-lr"])
        kept = ~up
        curve.append(
            {
                "threshold": t,
                "escalated": round(float(up.mean()), 4),
                "accuracy": round(float((p == y).mean()), 4),
                "accuracy_kept": round(float((p[kept] == y[kept]).mean()), 4) if kept.any() else None,
            }
        )
    return {"n_test": n, "cascade_threshold": threshold, "models": rows, "cascade_curve": curve}


def evaluate_answers(data_dir: Path | None) -> dict[str, Any]:
    """Retrieval recall and grounding-validator rates on test-split questions."""
    import numpy as np

    arts = art.Artifacts(data_dir)
    index = json.loads(arts.path(art.QA_INDEX).read_text(encoding="utf-8"))
    answers = np.load(arts.path(art.QA_ANSWER_VECTORS))
    questions = np.load(arts.path(art.QA_QUESTION_VECTORS))
    test = [i for i, q in enumerate(index["questions"]) if q["split"] == "test"]
    known = [i for i, q in enumerate(index["questions"]) if q["split"] != "test"]
    if not test:
        return {"n_test_questions": 0}
    gold = [set(index["questions"][i]["answers"]) for i in test]
    q = questions[test]
    by_answer = q @ answers.T
    by_question = np.full_like(by_answer, -1.0)
    sims = q @ questions[known].T
    for col, qi in enumerate(known):
        for a in index["questions"][qi]["answers"]:
            by_question[:, a] = np.maximum(by_question[:, a], sims[:, col])
    result: dict[str, Any] = {"n_test_questions": len(test), "n_answers": len(answers)}
    for mode, scores in (
        ("answer", by_answer),
        ("question", by_question),
        ("both", np.maximum(by_answer, by_question)),
    ):
        ranks = np.argsort(-scores, axis=1, kind="stable")
        pairs = list(zip(ranks, gold, strict=True))
        result[f"{mode}_R@1"] = round(float(np.mean([r[0] in g for r, g in pairs])), 4)
        result[f"{mode}_R@5"] = round(float(np.mean([bool(set(r[:5]) & g) for r, g in pairs])), 4)
    threshold = arts.calibration("grounding_threshold")
    rng = np.random.default_rng(7)
    pos = [float(by_answer[row, a]) for row, g in enumerate(gold) for a in g]
    neg = []
    for row, g in enumerate(gold):
        others = [a for a in range(len(answers)) if a not in g]
        neg.append(float(by_answer[row, others[int(rng.integers(len(others)))]]))
    result["grounding_threshold"] = round(threshold, 4)
    result["grounding_tpr"] = round(float(np.mean(np.array(pos) >= threshold)), 4)
    result["grounding_fpr"] = round(float(np.mean(np.array(neg) >= threshold)), 4)
    return result


def format_report(sentiment: dict[str, Any], answers: dict[str, Any]) -> str:
    """Renders both evaluations as a plain-text table."""
    lines = [f"Sentiment, test split ({sentiment['n_test']} tweets)"]
    header = f"{'model':40} {'acc':>6} {'macroF1':>8} {'cpu ms':>8} {'wall ms':>8} {'escal.':>7} {'load s':>7}"
    lines += [header, "-" * len(header)]
    for r in sentiment["models"]:
        lines.append(
            f"{r['model']:40} {r['accuracy']:6.3f} {r['macro_f1']:8.3f} {r['cpu_ms_per_item']:8.3f} "
            f"{r['wall_ms_per_item']:8.3f} {r.get('escalated', 0.0):7.3f} {r.get('load_s', float('nan')):7.2f}"
        )
    lines.append("Cascade at other thresholds (test): " + ", ".join(
        f"<{c['threshold']:.1f}: esc {c['escalated']:.2f} acc {c['accuracy']:.3f}" for c in sentiment["cascade_curve"]
    ))
    lines.append(f"Answers, test questions: {json.dumps(answers)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m modelweave.apps.triage.evaluate_models``."""
    parser = argparse.ArgumentParser(description="Evaluate the triage models on the test split.")
    parser.add_argument("--data-dir", type=Path, default=art.default_data_dir())
    parser.add_argument("--limit", type=int, default=None, help="evaluate on a subset of the test split")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    sentiment = evaluate_sentiment(args.data_dir, args.limit, args.batch_size)
    answers = evaluate_answers(args.data_dir)
    print(format_report(sentiment, answers))
    if args.json:
        args.json.write_text(json.dumps({"sentiment": sentiment, "answers": answers}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
