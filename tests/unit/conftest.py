"""Shared setup of the core unit tests (no Ray)."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Iterator

import pytest

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:  # graphs import the fake adapters as ``fakes:Name``
    sys.path.insert(0, _HERE)

from offline import no_internet  # noqa: E402  (needs tests/unit on sys.path, set above)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def demo_path() -> pathlib.Path:
    """The example graph shipped with the repository."""
    return REPO_ROOT / "examples" / "demo.yaml"


@pytest.fixture(autouse=True, scope="module")
def _offline() -> Iterator[None]:
    """Unit tests never reach the network (models and data ship in packages)."""
    with no_internet():
        yield
