"""``modelweave eval --shadow-log FILE``: compare versions on real traffic from a shadow node's sink.

The sink (``shadow: sink:``) holds one JSON record per mirrored request and candidate
(:meth:`modelweave.shadow_outcome.ShadowOutcome.record`). Per shadow node, candidate and
compared field this reports how often the candidate agreed with the primary, the mean
|delta| of numbers, the candidate's error rate, and both sides' latency (p50 / p99).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class FieldSummary:
    """Agreement on one compared field."""

    field: str
    compared: int = 0
    equal: int = 0
    deltas: list[float] = dataclasses.field(default_factory=list)

    @property
    def agreement(self) -> float | None:
        """Share of compared requests where the candidate equalled the primary."""
        return self.equal / self.compared if self.compared else None

    @property
    def mean_abs_delta(self) -> float | None:
        """Mean |candidate - primary| (numbers only)."""
        return sum(abs(d) for d in self.deltas) / len(self.deltas) if self.deltas else None


@dataclass
class CandidateSummary:
    """Everything the sink says about one candidate of one shadow node."""

    graph: str
    node: str
    candidate: str
    records: int = 0
    errors: int = 0
    primary_failed: int = 0
    fields: dict[str, FieldSummary] = dataclasses.field(default_factory=dict)
    primary_ms: list[float] = dataclasses.field(default_factory=list)
    candidate_ms: list[float] = dataclasses.field(default_factory=list)

    @property
    def error_rate(self) -> float | None:
        """Candidate failures among the requests whose primary answered."""
        runs = self.records - self.primary_failed
        return self.errors / runs if runs else None


@dataclass
class ShadowReport:
    """The summaries plus what could not be read."""

    candidates: list[CandidateSummary]
    malformed: int = 0


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarise(records: Iterable[dict[str, Any]]) -> list[CandidateSummary]:
    """Groups sink records by (graph, node, candidate), in first-seen order."""
    out: dict[tuple[str, str, str], CandidateSummary] = {}
    for rec in records:
        key = (str(rec.get("graph", "")), str(rec.get("node", "")), str(rec.get("candidate", "")))
        s = out.setdefault(key, CandidateSummary(*key))
        s.records += 1
        result = rec.get("result")
        if result == "primary_failed":
            s.primary_failed += 1
            continue
        if result == "error":
            s.errors += 1
            continue
        for name, comparison in (rec.get("fields") or {}).items():
            f = s.fields.setdefault(name, FieldSummary(name))
            f.compared += 1
            f.equal += bool(comparison.get("equal"))
            delta = comparison.get("delta")
            if isinstance(delta, int | float) and not isinstance(delta, bool):
                f.deltas.append(float(delta))
        for side, values in (("primary_ms", s.primary_ms), ("candidate_ms", s.candidate_ms)):
            ms = rec.get(side)
            if isinstance(ms, int | float):
                values.append(float(ms))
    return list(out.values())


def load(path: str | pathlib.Path) -> ShadowReport:
    """Reads a sink file.

    Raises:
        OSError: the file cannot be read.
    """
    records, malformed = [], 0
    with pathlib.Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                malformed += 1  # e.g. a line cut short when a process died mid-write
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                malformed += 1
    return ShadowReport(summarise(records), malformed)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report: ShadowReport) -> str:
    """The report as Markdown tables: agreement per field, then errors and latency per candidate."""
    if not report.candidates:
        return "no shadow records" + (f" ({report.malformed} malformed lines skipped)" if report.malformed else "")
    lines = ["## Shadow agreement (primary vs candidate, real traffic)", "",
             "| node | candidate | field | compared | agreement | mean abs delta |", "|---|---|---|---:|---:|---:|"]
    for s in report.candidates:
        for f in s.fields.values():
            lines.append(f"| {s.node} | {s.candidate} | {f.field} | {f.compared} | {_pct(f.agreement)} | "
                         f"{_num(f.mean_abs_delta, 4)} |")
    lines += ["", "| node | candidate | mirrored | candidate errors | primary failed | primary p50 / p99 ms | "
              "candidate p50 / p99 ms |", "|---|---|---:|---:|---:|---:|---:|"]
    for s in report.candidates:
        lines.append(
            f"| {s.node} | {s.candidate} | {s.records} | {s.errors} ({_pct(s.error_rate)}) | {s.primary_failed} | "
            f"{_num(percentile(s.primary_ms, 50))} / {_num(percentile(s.primary_ms, 99))} | "
            f"{_num(percentile(s.candidate_ms, 50))} / {_num(percentile(s.candidate_ms, 99))} |")
    if report.malformed:
        lines += ["", f"{report.malformed} malformed line(s) skipped"]
    return "\n".join(lines) + "\n"
