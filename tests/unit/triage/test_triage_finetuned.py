"""The fine-tuned expensive tier: built by prepare (torch), served from ONNX (no torch)."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelweave.apps.triage import artifacts as art
from modelweave.apps.triage import data, finetune
from modelweave.apps.triage.models import FineTunedSentiment
from modelweave.apps.triage.prepare import RECIPE
from modelweave.apps.triage.sentiment import texts_per_run
from modelweave.codecs import message_from_text
from modelweave.errors import FailedPrecondition


def test_manifest_records_both_precisions(data_dir: Path) -> None:
    manifest = art.read_manifest(art.artifacts_dir(data_dir))
    tuned = manifest["finetune"]
    assert tuned["precision"] in ("int8", "fp32") and tuned["max_length"] == 128
    assert set(tuned["validation_accuracy"]) == {"fp32", "int8"}
    # int8 keeps the file at about a quarter of fp32 (measured 22.9 MB vs 90.4 MB).
    assert tuned["bytes"]["int8"] < tuned["bytes"]["fp32"] / 3
    assert tuned["export_max_logit_diff"] < 1e-3
    assert art.FINETUNED_MODEL in manifest["artifacts"]
    p_value = tuned["validation_paired"]["p"]
    assert tuned["precision"] == finetune.choose_precision(tuned["validation_accuracy"], p_value, RECIPE["finetune"])
    cal = manifest["calibration"]
    assert 0.25 <= cal["finetuned_temperature"] <= 4 and 0.0 <= cal["finetuned_ensemble_weight"] <= 1.0
    assert 0.3 <= cal["finetuned_cascade_threshold"] <= 1.0


def test_serves_calibrated_batches_in_order(data_dir: Path) -> None:
    model = FineTunedSentiment(data_dir=str(data_dir), threads=1)
    assert FineTunedSentiment.is_idempotent({})
    model.load()
    model.health()
    tweets = data.tweets("test", 50)
    texts = [t.text for t in tweets] + ["", "ok"]
    batch = model.predict([message_from_text(t) for t in texts])
    single = [model.predict([message_from_text(t)])[0] for t in texts[:6]]
    assert model.predict([]) == []
    # The kept precision decides the texts per ONNX run; one per run for int8, so a text's
    # answer is the same alone and in a batch, byte for byte.
    precision = art.read_manifest(art.artifacts_dir(data_dir))["finetune"]["precision"]
    assert model._model is not None and model._model.batch_size == texts_per_run(precision)
    if precision == "int8":
        assert batch[:6] == single
    for c in batch:
        assert c.model == "minilm-ft" and c.label == c.scores[0].label
        assert sum(s.score for s in c.scores) == pytest.approx(1.0, abs=1e-4)
    # With 300 training tweets the tuned model is weak (measured .62 on these 50); chance is 1/3.
    accuracy = np.mean([c.label == t.label for c, t in zip(batch, tweets, strict=False)])
    assert accuracy > 0.45


def test_runs_of_several_int8_texts_answer_close_but_not_alike(data_dir: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    if art.read_manifest(art.artifacts_dir(data_dir))["finetune"]["precision"] != "int8":
        pytest.skip("the fp32 model answers alike at any run size")
    model = FineTunedSentiment(data_dir=str(data_dir), threads=1, batch_size=8)
    with caplog.at_level("WARNING", logger="modelweave.apps.triage.sentiment"):
        model.load()
    assert "batch_size 8 on the int8 model" in caplog.text
    texts = [t.text for t in data.tweets("test", 24)]
    batch = model.predict([message_from_text(t) for t in texts])
    single = [model.predict([message_from_text(t)])[0] for t in texts]
    # Why the default is one text per run: dynamic int8 quantisation scales activations per run
    # (padding included), so probabilities move with the run-mates (measured up to ~0.01).
    assert batch != single
    for b, s in zip(batch, single, strict=True):
        assert {x.label: x.score for x in b.scores} == pytest.approx({x.label: x.score for x in s.scores}, abs=0.05)


def test_texts_per_run_by_precision() -> None:
    assert texts_per_run("int8") == 1 and texts_per_run("fp32") > 1
    with pytest.raises(ValueError, match="precision 'fp16'"):
        texts_per_run("fp16")


def test_ensemble_mixes_with_tfidf(data_dir: Path) -> None:
    alone = FineTunedSentiment(data_dir=str(data_dir), threads=1)
    mixed = FineTunedSentiment(data_dir=str(data_dir), threads=1, ensemble=True, weight=0.5)
    alone.load()
    mixed.load()
    texts = ["I love this!", "The parcel never arrived and nobody answers."]
    assert mixed.model_name == "minilm-ft+tfidf"
    assert mixed.weight == 0.5
    assert mixed._tfidf is not None
    expected = 0.5 * alone.predict_proba(texts) + 0.5 * mixed._tfidf.predict_proba(texts)
    assert np.allclose(mixed.predict_proba(texts), expected, atol=1e-6)


def test_missing_artifacts_and_bad_params_are_named(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="prepare"):
        FineTunedSentiment(data_dir=str(tmp_path)).load()
    with pytest.raises(Exception, match="params.batch_size"):
        FineTunedSentiment(batch_size=0)


def test_without_torch_prepare_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_torch(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "torch":
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(FailedPrecondition, match=r"\.\[train\]"):
        finetune.train(["a"], [0], {})


def test_length_bucketed_batches_are_seeded_and_complete() -> None:
    lengths = [int(x) for x in np.random.default_rng(0).integers(1, 60, size=1000)]
    first = finetune._batches(lengths, 32, np.random.default_rng(7))
    again = finetune._batches(lengths, 32, np.random.default_rng(7))
    assert first == again
    assert sorted(i for b in first for i in b) == list(range(1000))
    # Similar lengths share a batch: far less padding than random batches.
    padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in first)
    assert padding < 0.2 * sum(lengths)


def test_rebuild_for_another_reason_reuses_the_fine_tuned_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelweave.apps.triage import prepare as prep

    out = prep.prepare(tmp_path, progress=False, limit=40)
    first = art.read_manifest(out)
    assert "finetune_train_s" in first["timings"]
    monkeypatch.setitem(prep.RECIPE, "tfidf", {**prep.RECIPE["tfidf"], "C": 2.0})  # not a fine-tuning input
    prep.prepare(tmp_path, progress=False, limit=40)
    second = art.read_manifest(out)
    assert second["inputs"]["recipe"]["tfidf"]["C"] == 2.0
    assert "finetune_train_s" not in second["timings"] and "finetune_reused_validate_s" in second["timings"]
    assert second["artifacts"][art.FINETUNED_MODEL] == first["artifacts"][art.FINETUNED_MODEL]
    assert second["finetune"]["inputs"] == first["finetune"]["inputs"]
    assert second["calibration"]["finetuned_temperature"] == first["calibration"]["finetuned_temperature"]


def test_int8_is_kept_unless_fp32_is_ahead_by_more_than_the_tolerance_and_significantly() -> None:
    recipe = {"int8_tolerance": 0.005, "int8_significance": 0.05}
    # The session-23 reading: fp32 0.56 points ahead on 3,000 tweets, not significant.
    assert finetune.choose_precision({"fp32": 0.7753, "int8": 0.7697}, 0.2, recipe) == "int8"
    assert finetune.choose_precision({"fp32": 0.7753, "int8": 0.7697}, 0.01, recipe) == "fp32"
    # Significant but within the tolerance: still int8.
    assert finetune.choose_precision({"fp32": 0.774, "int8": 0.771}, 0.001, recipe) == "int8"
    assert finetune.choose_precision({"fp32": 0.70, "int8": 0.78}, 0.0, recipe) == "int8"


def test_precision_comparison_counts_discordant_tweets() -> None:
    fp32 = np.array([True, True, True, False, False, True])
    int8 = np.array([True, False, False, True, False, True])
    paired = finetune.precision_comparison(fp32, int8)
    assert (paired["only_fp32"], paired["only_int8"]) == (2, 1)
    assert paired["p"] == pytest.approx(1.0)
    lopsided = finetune.precision_comparison(np.ones(40, dtype=bool), np.zeros(40, dtype=bool))
    assert lopsided["only_fp32"] == 40 and lopsided["p"] < 1e-6
