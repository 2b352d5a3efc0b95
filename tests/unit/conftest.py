"""Shared setup of the core unit tests (no Ray)."""

from __future__ import annotations

import pathlib
import sys

import pytest

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:  # graphs import the fake adapters as ``fakes:Name``
    sys.path.insert(0, _HERE)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def demo_path() -> pathlib.Path:
    """The example graph shipped with the repository."""
    return REPO_ROOT / "examples" / "demo.yaml"
