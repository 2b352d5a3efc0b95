"""prepare(): cached, verified, deterministic artifacts with a manifest."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from modelweave.apps.triage import artifacts as art
from modelweave.apps.triage.prepare import prepare
from modelweave.apps.triage.router import ROUTER_MODEL
from modelweave.errors import FailedPrecondition


def test_second_call_reuses_the_cache(data_dir: Path) -> None:
    out = art.artifacts_dir(data_dir)
    before = (out / art.MANIFEST).read_text()
    limit = json.loads(before)["limit"]
    started = time.perf_counter()
    assert prepare(data_dir, progress=False, limit=limit) == out
    assert time.perf_counter() - started < 1.0
    assert (out / art.MANIFEST).read_text() == before


def test_manifest_records_hashes_and_calibration(data_dir: Path) -> None:
    manifest = art.read_manifest(art.artifacts_dir(data_dir))
    assert manifest["version"] == art.ARTIFACT_VERSION and manifest["limit"] == 300
    assert set(manifest["artifacts"]) == {
        art.TFIDF_MODEL, art.HEAD_MODEL, art.QA_INDEX, art.QA_ANSWER_VECTORS, art.QA_QUESTION_VECTORS,
        art.FINETUNED_MODEL, ROUTER_MODEL, art.TFIDF_SUPPORT_MODEL,
    }
    for name, digest in manifest["artifacts"].items():
        assert art.file_sha256(art.artifacts_dir(data_dir) / name) == digest
    cal = manifest["calibration"]
    assert 0.25 <= cal["tfidf_temperature"] <= 4 and 0.0 <= cal["ensemble_weight"] <= 1.0
    assert 0.25 <= cal["tfidf_support_temperature"] <= 4
    assert manifest["sizes"]["support_dev"] == 300 and manifest["inputs"]["recipe"]["support"]["weight"] > 0
    assert 0.3 <= cal["cascade_threshold"] <= 1.0 and 0.0 < cal["grounding_threshold"] < 0.6
    assert manifest["classes"] == ["negative", "neutral", "positive"]
    # Measured on the 300-tweet validation subset: tfidf .617, head .643, ensemble .660.
    assert manifest["validation"]["tfidf_accuracy"] > 0.52
    assert manifest["validation"]["ensemble_accuracy"] > 0.55


def test_rebuilds_when_an_artifact_is_tampered_and_is_deterministic(tmp_path: Path) -> None:
    out = prepare(tmp_path, progress=False, limit=40)
    first = json.loads((out / art.MANIFEST).read_text())
    (out / art.HEAD_MODEL).write_bytes(b"garbage")
    prepare(tmp_path, progress=False, limit=40)
    second = json.loads((out / art.MANIFEST).read_text())
    assert art.file_sha256(out / art.HEAD_MODEL) == second["artifacts"][art.HEAD_MODEL]
    assert second["calibration"] == first["calibration"]  # same seeds, same data: same model
    assert second["artifacts"][art.TFIDF_MODEL] == first["artifacts"][art.TFIDF_MODEL]
    assert not list(tmp_path.glob(".triage-*"))  # no leftover build directories


def test_adapters_explain_missing_artifacts(tmp_path: Path) -> None:
    from modelweave.apps.triage.models import TfidfSentiment

    with pytest.raises(FailedPrecondition, match="modelweave.apps.triage.prepare"):
        TfidfSentiment(data_dir=str(tmp_path)).load()


def test_an_older_manifest_names_the_missing_calibration(data_dir: Path, tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "triage"
    shutil.copytree(art.artifacts_dir(data_dir), old)
    manifest = json.loads((old / art.MANIFEST).read_text())
    del manifest["calibration"]["tfidf_support_temperature"]  # as written before the support tier
    (old / art.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(FailedPrecondition, match="no calibration 'tfidf_support_temperature'.*prepare"):
        art.Artifacts(tmp_path).calibration("tfidf_support_temperature")


def test_default_data_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(art.DATA_DIR_ENV, str(tmp_path))
    assert art.artifacts_dir() == tmp_path / "triage"
    monkeypatch.delenv(art.DATA_DIR_ENV)
    assert art.default_data_dir() == Path.home() / ".cache" / "modelweave"
