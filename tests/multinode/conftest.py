"""The multi-node test is opt-in: it starts its own two Ray nodes (~2 min, ~2 GB) next to the suite."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skips ``multinode`` tests unless selected with ``-m multinode`` or ``MODELWEAVE_MULTINODE=1``."""
    if "multinode" in (config.getoption("markexpr") or "") or os.environ.get("MODELWEAVE_MULTINODE") == "1":
        return
    skip = pytest.mark.skip(reason="multi-node test: run with `pytest -m multinode` (starts two Ray nodes)")
    for item in items:
        if "multinode" in item.keywords:
            item.add_marker(skip)
