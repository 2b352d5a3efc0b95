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
    kept = tuned["validation_accuracy"][tuned["precision"]]
    assert kept >= max(tuned["validation_accuracy"].values()) - 0.005
    cal = manifest["calibration"]
    assert 0.25 <= cal["finetuned_temperature"] <= 4 and 0.0 <= cal["finetuned_ensemble_weight"] <= 1.0
    assert 0.3 <= cal["finetuned_cascade_threshold"] <= 1.0


def test_serves_calibrated_batches_in_order(data_dir: Path) -> None:
    model = FineTunedSentiment(data_dir=str(data_dir), threads=1, batch_size=4)
    assert FineTunedSentiment.is_idempotent({})
    model.load()
    model.health()
    tweets = data.tweets("test", 50)
    texts = [t.text for t in tweets] + ["", "ok"]
    batch = model.predict([message_from_text(t) for t in texts])
    single = [model.predict([message_from_text(t)])[0] for t in texts[:6]]
    assert model.predict([]) == []
    # Dynamic int8 quantisation scales activations per batch (padding included), so a text's
    # probabilities move slightly with its batch-mates (measured up to ~0.01): close, not equal.
    for b, s in zip(batch, single, strict=False):
        assert {x.label: x.score for x in b.scores} == pytest.approx({x.label: x.score for x in s.scores}, abs=0.05)
    for c in batch:
        assert c.model == "minilm-ft" and c.label == c.scores[0].label
        assert sum(s.score for s in c.scores) == pytest.approx(1.0, abs=1e-4)
    # With 300 training tweets the tuned model is weak (measured .62 on these 50); chance is 1/3.
    accuracy = np.mean([c.label == t.label for c, t in zip(batch, tweets, strict=False)])
    assert accuracy > 0.45


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
