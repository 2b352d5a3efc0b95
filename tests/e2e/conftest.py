"""Fixtures for end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cli_helpers import RunningServer, start_server


@pytest.fixture(scope="module")
def demo_server() -> Iterator[RunningServer]:
    """`modelweave run examples/demo.yaml` for the module; stopped with Ctrl-C at the end."""
    server = start_server("examples/demo.yaml")
    yield server
    server.stop()
