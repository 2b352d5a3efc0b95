"""Artifact sets reach a node that never ran prepare: verified local copy, shared URI, fetchers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from modelweave import artifacts
from modelweave.errors import FailedPrecondition


def make_set(directory: Path, files: dict[str, bytes]) -> None:
    directory.mkdir(parents=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    manifest = {"version": 1, "artifacts": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}}
    (directory / "manifest.json").write_text(json.dumps(manifest))


FILES = {"model.joblib": b"weights" * 100, "index.json": b'{"a": 1}'}


def test_a_complete_local_set_is_used_without_fetching(tmp_path: Path) -> None:
    make_set(tmp_path / "demo", FILES)
    called = []
    assert artifacts.ensure_artifacts(tmp_path / "demo", [("never", lambda n: called.append(n) or {})]) \
        == tmp_path / "demo"
    assert called == []


def test_a_missing_set_is_fetched_from_a_mounted_path_and_a_file_uri(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    make_set(tmp_path / "shared" / "demo", FILES)
    for i, uri in enumerate([str(tmp_path / "shared"), f"file://{tmp_path / 'shared'}"]):
        monkeypatch.setenv(artifacts.ARTIFACTS_URI_ENV, uri)
        local = tmp_path / f"node{i}" / "demo"
        assert artifacts.ensure_artifacts(local, artifacts.default_fetchers()) == local
        assert (local / "model.joblib").read_bytes() == FILES["model.joblib"]
        assert artifacts.problems(local) == []
        assert not [p for p in local.parent.iterdir() if p.name.startswith(".demo-")]  # no temp dirs left


def test_a_corrupt_copy_is_refused_and_the_next_source_is_tried(tmp_path: Path) -> None:
    make_set(tmp_path / "good" / "demo", FILES)
    make_set(tmp_path / "bad" / "demo", FILES)
    (tmp_path / "bad" / "demo" / "model.joblib").write_bytes(b"truncated")
    sources = [("bad", lambda n: artifacts.fetch_from_uri(str(tmp_path / "bad"), n)),
               ("good", lambda n: artifacts.fetch_from_uri(str(tmp_path / "good"), n))]
    local = tmp_path / "node" / "demo"
    artifacts.ensure_artifacts(local, sources)
    assert (local / "model.joblib").read_bytes() == FILES["model.joblib"]


def test_a_corrupt_local_copy_is_replaced(tmp_path: Path) -> None:
    make_set(tmp_path / "shared" / "demo", FILES)
    make_set(tmp_path / "node" / "demo", FILES)
    (tmp_path / "node" / "demo" / "index.json").write_bytes(b"{}")
    assert artifacts.problems(tmp_path / "node" / "demo") == ["index.json does not match its sha256 in manifest.json"]
    artifacts.ensure_artifacts(tmp_path / "node" / "demo",
                               [("shared", lambda n: artifacts.fetch_from_uri(str(tmp_path / "shared"), n))])
    assert artifacts.problems(tmp_path / "node" / "demo") == []


def test_no_source_fails_naming_the_set_the_file_the_node_and_what_was_tried(tmp_path: Path) -> None:
    make_set(tmp_path / "shared" / "demo", {"other.bin": b"x"})
    with pytest.raises(FailedPrecondition) as err:
        artifacts.ensure_artifacts(tmp_path / "node" / "demo",
                                   [("shared", lambda n: artifacts.fetch_from_uri(str(tmp_path / "nowhere"), n))])
    text = str(err.value)
    assert "artifact set 'demo'" in text and "manifest.json is missing" in text
    assert artifacts.node_description().split(" ")[0] in text
    assert "shared: cannot read" in text and "MODELWEAVE_ARTIFACTS_URI" in text
    with pytest.raises(FailedPrecondition, match="none configured"):
        artifacts.ensure_artifacts(tmp_path / "node" / "demo", [])


def test_verify_names_the_bad_artifact_and_refuses_unsafe_names() -> None:
    manifest = {"artifacts": {"a.bin": hashlib.sha256(b"a").hexdigest()}}
    files = {"manifest.json": json.dumps(manifest).encode(), "a.bin": b"b", "extra": b"ignored"}
    with pytest.raises(FailedPrecondition, match="artifact 'a.bin' does not match"):
        artifacts.verify_files(files)
    files["a.bin"] = b"a"
    assert set(artifacts.verify_files(files)) == {"manifest.json", "a.bin"}
    with pytest.raises(FailedPrecondition, match="unsafe artifact name"):
        artifacts.manifest_hashes({"artifacts": {"../etc/passwd": "0"}})


def test_read_set_refuses_to_publish_an_incomplete_set(tmp_path: Path) -> None:
    make_set(tmp_path / "demo", FILES)
    assert set(artifacts.read_set(tmp_path / "demo")) == {"manifest.json", *FILES}
    (tmp_path / "demo" / "index.json").unlink()
    with pytest.raises(FailedPrecondition, match="index.json is missing"):
        artifacts.read_set(tmp_path / "demo")
