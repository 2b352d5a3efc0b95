"""The semantic-cache pair files: schema, kinds, and that the held-out set shares no text with the shipped one.

``semantic_cache_pairs.jsonl`` was used to tune the guard; ``semantic_cache_pairs_heldout.jsonl`` is only
honest while none of its texts (or pairs) leak in from the tuning set. No model is loaded here.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections import Counter
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(20)

ASSETS = pathlib.Path(__file__).resolve().parents[2] / "modelweave/apps/triage/assets"
SHIPPED = ASSETS / "semantic_cache_pairs.jsonl"
HELDOUT = ASSETS / "semantic_cache_pairs_heldout.jsonl"
FIELDS = {"kind": str, "query": str, "cached": str, "should_hit": bool}
MISS_KINDS = {"negation", "number", "entity", "opposite", "intent"}
KINDS = MISS_KINDS | {"paraphrase"}


def norm(text: str) -> str:
    """Case- and whitespace-insensitive form, so a re-capitalised copy still counts as the same text."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def load(path: pathlib.Path) -> list[dict[str, Any]]:
    """Parses one file, failing with the line number of the first malformed row."""
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            pytest.fail(f"{path.name}:{lineno}: not JSON: {exc}")
        assert isinstance(row, dict), f"{path.name}:{lineno}: not an object"
        rows.append(row)
    return rows


@pytest.mark.parametrize("path", [SHIPPED, HELDOUT], ids=lambda p: p.name)
def test_rows_follow_the_schema(path: pathlib.Path) -> None:
    rows = load(path)
    for i, row in enumerate(rows, 1):
        assert set(row) == set(FIELDS), f"{path.name} row {i}: fields {sorted(row)}"
        for field, typ in FIELDS.items():
            assert isinstance(row[field], typ), f"{path.name} row {i}: {field} is not {typ.__name__}"
        assert row["kind"] in KINDS, f"{path.name} row {i}: kind {row['kind']!r}"
        # Only paraphrases may be served; every other kind is a must-not-hit case.
        assert row["should_hit"] is (row["kind"] == "paraphrase"), f"{path.name} row {i}: should_hit vs kind"
        assert row["query"].strip() and row["cached"].strip(), f"{path.name} row {i}: empty text"
        assert norm(row["query"]) != norm(row["cached"]), f"{path.name} row {i}: query equals cached"


@pytest.mark.parametrize("path", [SHIPPED, HELDOUT], ids=lambda p: p.name)
def test_no_duplicate_pairs_within_a_file(path: pathlib.Path) -> None:
    pairs = Counter(frozenset((norm(r["query"]), norm(r["cached"]))) for r in load(path))
    assert [sorted(p) for p, n in pairs.items() if n > 1] == []


def test_heldout_size_and_mix_match_the_shipped_set() -> None:
    rows = load(HELDOUT)
    kinds = Counter(r["kind"] for r in rows)
    assert len(rows) >= 150
    assert set(kinds) == KINDS, f"missing kinds: {KINDS - set(kinds)}"
    share = kinds["paraphrase"] / len(rows)
    assert 0.4 <= share <= 0.6, f"paraphrase share {share:.2f}"


def test_heldout_shares_no_text_with_the_shipped_set() -> None:
    shipped = {norm(r[k]) for r in load(SHIPPED) for k in ("query", "cached")}
    heldout = {norm(r[k]) for r in load(HELDOUT) for k in ("query", "cached")}
    assert sorted(shipped & heldout) == []
