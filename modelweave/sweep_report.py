"""Reports of ``modelweave eval --sweep`` (:mod:`modelweave.sweep`): Markdown, JSON and the frontier plot."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence
from typing import Any

from modelweave.evaluate import VersionReport
from modelweave.sweep import SweepResult


def markdown(results: Sequence[SweepResult]) -> str:
    """One Markdown table per swept graph."""
    out = []
    for r in results:
        t = r.target
        own = f"{t.current:g}" + (" (adaptive: its initial value)" if t.adaptive else "")
        out += [f"Sweep of `{t.field} {t.op} T` at `{t.path}` in `{r.name}` (its own T: {own}); "
                f"'{t.branch}' is the share of requests taken into branch `{t.branch}`:", "",
                f"| T | accuracy | macro-F1 | {t.branch} | CPU ms/req | cost/req | errors |",
                "|---|---|---|---|---|---|---|"]
        for p in r.points:
            mark = " *" if math.isclose(p.threshold, t.current) else ""
            out.append(f"| {p.threshold:g}{mark} | {p.accuracy:.3f} | {p.macro_f1:.3f} | {p.escalated:.0%} | "
                       f"{p.cpu_ms:.2f} | {p.cost:.2f} | {p.errors} |")
        out.append("")
    return "\n".join(out) + "\n"


def as_dict(result: SweepResult) -> dict[str, Any]:
    """JSON-friendly sweep result."""
    return {"name": result.name, "target": dict(result.target.__dict__),
            "points": [dict(p.__dict__) for p in result.points]}


def write_json(results: Sequence[SweepResult], json_path: str | pathlib.Path) -> None:
    """Writes the sweeps next to ``eval --json``'s file as ``NAME.sweep.json`` (nothing when none)."""
    import json

    if results:
        pathlib.Path(json_path).with_suffix(".sweep.json").write_text(
            json.dumps([as_dict(r) for r in results], indent=2), encoding="utf-8")


def plot(results: Sequence[SweepResult], reports: Sequence[VersionReport], path: str | pathlib.Path,
         title: str = "quality vs escalation") -> None:
    """PNG: accuracy against the escalated share (sweeps) and against model CPU (versions and sweeps).

    Versions that were not swept appear as labelled horizontal lines on the left panel (their
    escalated share is not defined by the swept route).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modelweave.evaluate import frontier

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    swept = {r.name for r in results}
    for i, r in enumerate(results):
        color = f"C{i}"
        xs, ys = [p.escalated * 100 for p in r.points], [p.accuracy for p in r.points]
        left.plot(xs, ys, "o-", ms=3, lw=1.2, color=color, label=f"{r.name} (sweep {r.target.field})")
        right.plot([max(p.cpu_ms, 1e-3) for p in r.points], ys, "o-", ms=3, lw=1.2, color=color, label=r.name)
        for p in r.points:
            if math.isclose(p.threshold, r.target.current):
                left.scatter([p.escalated * 100], [p.accuracy], marker="*", s=120, color=color, zorder=3)
        for p in r.points[:: max(1, len(r.points) // 6)]:
            left.annotate(f"{p.threshold:g}", (p.escalated * 100, p.accuracy), fontsize=6, color=color,
                          xytext=(3, -8), textcoords="offset points")
    for j, rep in enumerate(rep for rep in reports if rep.name not in swept and not rep.removed):
        left.axhline(rep.accuracy, ls=":", lw=0.9, color=f"C{(len(results) + j) % 10}")
        left.annotate(f"{rep.name} {rep.accuracy:.3f}", (0, rep.accuracy), fontsize=7, xytext=(2, 2),
                      textcoords="offset points", color=f"C{(len(results) + j) % 10}")
    for rep in reports:
        right.scatter([max(rep.cpu_ms, 1e-3)], [rep.accuracy], marker="x" if rep.removed else "s", s=30,
                      color="black")
        right.annotate(rep.name, (max(rep.cpu_ms, 1e-3), rep.accuracy), fontsize=7, xytext=(4, 3),
                       textcoords="offset points")
    front = frontier(reports)
    right.plot([max(r.cpu_ms, 1e-3) for r in front], [r.accuracy for r in front], "--", color="#b91c1c", lw=1,
               label="versions' frontier")
    left.set_xlabel("requests reaching the swept branch (%)")
    left.set_ylabel("accuracy")
    left.set_title(f"{title} (* = graph's own threshold)")
    right.set_xscale("log")
    right.set_xlabel("model CPU ms per request (log)")
    right.set_title("quality vs compute")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
