"""Writes one split of the labelled tweets to a file for ``modelweave eval`` / ``modelweave batch``.

``python -m modelweave.apps.triage.export --split test --out test.parquet [--limit N]``
writes columns ``row_id``, ``text``, ``label`` (the fixed split of :mod:`.data`).
"""

from __future__ import annotations

import argparse

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from modelweave.apps.triage import data


def export(split: data.Split, out: str, limit: int | None = None) -> int:
    """Writes the split (parquet, or CSV by extension); returns the row count."""
    rows = data.tweets(split, limit=limit)
    table = pa.table({"row_id": [t.row_id for t in rows], "text": [t.text for t in rows],
                      "label": [t.label for t in rows]})
    if out.endswith(".csv"):
        pcsv.write_csv(table, out)
    else:
        pq.write_table(table, out)
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", choices=data.SPLITS, default="test")
    parser.add_argument("--out", required=True)
    parser.add_argument("--limit", type=int, default=None, help="deterministic hashed subset of this size")
    opts = parser.parse_args(argv)
    print(f"wrote {export(opts.split, opts.out, opts.limit)} rows to {opts.out}")


if __name__ == "__main__":
    main()
