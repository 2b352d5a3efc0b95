"""`modelweave batch` refuses a job that cannot succeed in one line, exit 2, before Ray starts.

Each case used to start Ray, load the model pools and fail inside Ray Data (an input column
named ``label``: ~25 s and a stack trace). Now they end in about a second.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_helpers import REPO, cli

pytestmark = pytest.mark.e2e

#: Generous: the command measured 1-6 s here (imports, on 2 busy cores); Ray plus pools take ~25 s.
FAST_S = 15.0


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("preflight")
    pq.write_table(pa.table({"text": ["great", "broken"], "label": ["positive", "negative"]}), d / "labelled.parquet")
    pq.write_table(pa.table({"id": [1], "features": pa.array([[0.1, 0.2]], type=pa.list_(pa.float32()))}),
                   d / "vectors.parquet")
    (d / "done").mkdir()
    (d / "done" / "part-0.parquet").write_text("x")
    return d


def _refused(result: subprocess.CompletedProcess[str], elapsed: float, expected: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert lines == [lines[0]] and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "Ray" not in result.stderr  # nothing started
    assert elapsed < FAST_S, f"took {elapsed:.1f} s"


@pytest.mark.parametrize(("args", "expected"), [
    (["--input", "{d}/labelled.parquet"], "input column(s) 'label' collide with the result columns"),
    (["--input", "{d}/missing.parquet"], "input '{d}/missing.parquet' does not exist"),
    (["--input", "{d}/vectors.parquet"], "no input column for the graph's Text input (columns: id, features)"),
    (["--input", "{d}/vectors.parquet", "--text-column", "features"], "column 'features' is list<"),
    (["--input", "{d}/labelled.parquet", "--prefix", "mw_", "--output", "{d}/done"], "already exists"),
    (["--input", "{d}/labelled.parquet", "--prefix", "mw_", "--column", "Embedding=text"],
     "the graph takes no Embedding input"),
], ids=["label-collides", "missing-input", "no-text-column", "list-as-text", "output-exists", "undeclared-part"])
def test_batch_refuses_before_ray_starts(data: pathlib.Path, args: list[str], expected: str) -> None:
    argv = [a.format(d=data) for a in args]
    if "--output" not in argv:
        argv += ["--output", str(data / "out")]
    start = time.monotonic()
    result = cli("batch", "examples/demo.yaml", *argv, timeout=60)
    _refused(result, time.monotonic() - start, expected.format(d=data))
    assert not (data / "out").exists()


def test_cluster_batch_job_refuses_before_joining_the_cluster(data: pathlib.Path) -> None:
    """`ray job submit -- python cluster/batch_job.py ...` gets the same pre-flight (no cluster reached)."""
    start = time.monotonic()
    result = subprocess.run([sys.executable, "cluster/batch_job.py", "examples/demo.yaml", "--input",
                             str(data / "labelled.parquet"), "--output", str(data / "out")],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    _refused(result, time.monotonic() - start, "'label' collide")
