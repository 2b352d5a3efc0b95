"""The pure-Python evaluation runs end to end on small artifacts."""

from __future__ import annotations

from pathlib import Path

from modelweave.apps.triage.evaluate_models import evaluate_answers, evaluate_sentiment, format_report


def test_evaluation_reports_every_model_and_the_cascade(data_dir: Path) -> None:
    result = evaluate_sentiment(data_dir, limit=60, batch_size=32)
    names = [r["model"] for r in result["models"]]
    assert names[:6] == ["vader", "tfidf-lr", "minilm-lr", "minilm-lr+tfidf", "minilm-ft", "minilm-ft+tfidf"]
    assert names[6].startswith("cascade") and names[7].startswith("cascade tfidf->minilm-ft")
    cascade = result["models"][6]
    assert 0.0 <= cascade["escalated"] <= 1.0
    for row in result["models"]:
        assert 0.0 <= row["macro_f1"] <= row["accuracy"] + 0.2 and row["cpu_ms_per_item"] > 0
    costs = {r["model"]: r["cpu_ms_per_item"] for r in result["models"]}
    assert costs["vader"] < costs["minilm-lr"] and costs["tfidf-lr"] < costs["minilm-lr"]
    curve = result["cascade_curve"]
    assert [c["escalated"] for c in curve] == sorted(c["escalated"] for c in curve)
    answers = evaluate_answers(data_dir)
    assert answers["n_test_questions"] > 0 and 0.0 <= answers["answer_R@1"] <= answers["answer_R@5"] <= 1.0
    assert "cascade" in format_report(result, answers)
