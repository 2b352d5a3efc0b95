"""Uncertainty of ``modelweave eval`` figures: intervals for accuracy and paired comparisons.

On a few hundred rows a one-point difference in accuracy is often noise. Two versions run
on the same rows, so the comparison is *paired*: only the rows where exactly one version is
right carry information about which is better. Everything here is closed-form and
deterministic (no bootstrap), in plain Python.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any


def _z(level: float) -> float:
    """The two-sided standard-normal quantile of a confidence level (1.96 at 0.95)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n``.

    Unlike the normal (Wald) interval it stays inside [0, 1] and keeps its coverage near 0
    and 1, where good classifiers sit.

    Args:
        successes: Number of successes, ``0 <= successes <= n``.
        n: Number of trials.
        level: Confidence level.

    Returns:
        ``(low, high)``; ``(0.0, 1.0)`` when ``n == 0`` (no rows say nothing about the proportion).

    Raises:
        ValueError: ``successes`` outside ``[0, n]`` or ``level`` outside (0, 1).
    """
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    z = _z(level)
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0 and n the bound is exactly 0 or 1; the formula gives it only up to float rounding.
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Exact two-sided McNemar test: a binomial test of the discordant pairs with p = 1/2.

    ``p = min(1, 2 * P(X <= min(b, c)))`` for ``X ~ Bin(b + c, 1/2)``; 1.0 when ``b + c == 0``.
    The tail is summed in log space relative to its largest term, so tens of thousands of
    discordant pairs neither overflow a float nor take long.

    Args:
        b: Pairs where only the first version is right.
        c: Pairs where only the second version is right.

    Returns:
        The two-sided p-value.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    m, k = b + c, min(b, c)
    if m == 0:
        return 1.0
    # Terms C(m, i) grow with i up to m/2, so C(m, k) is the largest of the tail i <= k;
    # summing ratios to it (walking down with C(m, i-1) = C(m, i) * i / (m - i + 1)) keeps
    # every number near 1 and lets the walk stop once the terms no longer count.
    log_top = math.lgamma(m + 1) - math.lgamma(k + 1) - math.lgamma(m - k + 1) - m * math.log(2)
    total, term = 1.0, 1.0
    for i in range(k, 0, -1):
        term *= i / (m - i + 1)
        total += term
        if term < total * 1e-17:
            break
    return min(1.0, 2 * math.exp(log_top + math.log(total)))


def _phi(a: int, b: int, c: int, d: int) -> float:
    """Newcombe's continuity-corrected correlation of the paired 2x2 table (0 when undefined)."""
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    if margins == 0:  # a version right on every row or on none: no correlation to estimate
        return 0.0
    cross, half_n = a * d - b * c, (a + b + c + d) / 2
    if cross > half_n:
        return (cross - half_n) / math.sqrt(margins)
    return cross / math.sqrt(margins) if cross < 0 else 0.0


def newcombe_paired_interval(a: int, b: int, c: int, d: int, level: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval for the difference of two paired proportions.

    Newcombe (1998, Statistics in Medicine 17:2635, method 10): the Wilson intervals of the
    two marginal proportions combined by "square and add", with the covariance term weighted
    by the phi correlation of the pairs (continuity-corrected as Newcombe does; 0 when a
    margin is empty). The table is ``a`` both right, ``b`` only the first right, ``c`` only
    the second right, ``d`` both wrong; the difference is ``(b - c) / n``.

    Returns:
        ``(low, high)`` within [-1, 1]; ``(-1.0, 1.0)`` for an empty table.
    """
    n = a + b + c + d
    if n == 0:
        return -1.0, 1.0
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, level)
    l2, u2 = wilson_interval(a + c, n, level)
    phi = _phi(a, b, c, d)
    # max(0, ...) guards float rounding only: with |phi| <= 1 both sums are >= 0.
    down = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    up = math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return max(-1.0, p1 - p2 - down), min(1.0, p1 - p2 + up)


def correctness(truth: Sequence[str], predicted: Sequence[str | None]) -> list[bool]:
    """Per row, whether the prediction equals the truth; a missing prediction (an error) is wrong."""
    return [p is not None and p == t for t, p in zip(truth, predicted, strict=True)]


@dataclass(frozen=True)
class PairedComparison:
    """One version against a reference on the same rows.

    Attributes:
        name: The compared version.
        reference: The reference version.
        rows: Rows compared.
        only_this_right: Rows only ``name`` got right.
        only_reference_right: Rows only ``reference`` got right.
        difference: Accuracy of ``name`` minus accuracy of ``reference``.
        low: Lower bound of the interval of ``difference`` (Newcombe).
        high: Upper bound of that interval.
        p_value: Exact two-sided McNemar p-value.
        level: Confidence level of the interval.
    """

    name: str
    reference: str
    rows: int
    only_this_right: int
    only_reference_right: int
    difference: float
    low: float
    high: float
    p_value: float
    level: float = 0.95

    @property
    def verdict(self) -> str:
        """``better`` / ``worse`` when the interval excludes 0, else ``no significant difference``."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no significant difference"

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form, verdict included."""
        return {**asdict(self), "verdict": self.verdict}


def paired_comparison(correct: Sequence[bool], reference_correct: Sequence[bool], *, name: str, reference: str,
                      level: float = 0.95) -> PairedComparison:
    """Compares two versions' per-row correctness on the same rows (see :func:`correctness`).

    Raises:
        ValueError: the two sequences differ in length (not the same rows).
    """
    if len(correct) != len(reference_correct):
        raise ValueError(f"{name!r} has {len(correct)} rows, {reference!r} {len(reference_correct)}: not paired")
    a = b = c = d = 0
    for this, ref in zip(correct, reference_correct, strict=True):
        if this and ref:
            a += 1
        elif this:
            b += 1
        elif ref:
            c += 1
        else:
            d += 1
    n = len(correct)
    low, high = newcombe_paired_interval(a, b, c, d, level)
    return PairedComparison(name=name, reference=reference, rows=n, only_this_right=b, only_reference_right=c,
                            difference=(b - c) / n if n else 0.0, low=low, high=high, p_value=mcnemar_exact_p(b, c),
                            level=level)


def compare_versions(versions: Sequence[tuple[str, Sequence[bool]]], reference: str | None = None, *,
                     level: float = 0.95) -> tuple[list[PairedComparison], list[str]]:
    """Each version's per-row correctness against the reference's (default: the first version).

    Args:
        versions: ``(name, correct)`` per version, rows in the same order.
        reference: Name of the reference version.
        level: Confidence level of the intervals.

    Returns:
        The comparisons, and the names of versions with another number of rows (not paired).

    Raises:
        ValueError: no version is named ``reference``.
    """
    names = [name for name, _ in versions]
    if reference is None and names:
        reference = names[0]
    if reference not in names:
        raise ValueError(f"no version named {reference!r} (versions: {', '.join(names)})")
    base = dict(versions)[reference]
    results, unpaired = [], []
    for name, correct in versions:
        if name == reference:
            continue
        if len(correct) == len(base):
            results.append(paired_comparison(correct, base, name=name, reference=reference, level=level))
        else:
            unpaired.append(name)
    return results, unpaired


def _p_text(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown(results: Sequence[PairedComparison], reference: str, unpaired: Sequence[str] = ()) -> str:
    """Markdown section: each comparison with ``reference``, plus a note for versions not paired."""
    level = f"{results[0].level:.0%}".replace("%", " %") if results else "95 %"
    lines = [f"Paired comparison with `{reference}` (same rows; {level} Newcombe interval of the accuracy "
             "difference, exact McNemar test):", "",
             f"| version | Δ accuracy | {level} interval | only this right | only `{reference}` right | McNemar p "
             "| verdict |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.difference:+.3f} | {r.low:+.3f} to {r.high:+.3f} | {r.only_this_right} | "
                     f"{r.only_reference_right} | {_p_text(r.p_value)} | {r.verdict} |")
    if unpaired:
        lines += ["", "Not paired (a different number of rows): "
                  + ", ".join(f"`{n}`" for n in unpaired)]
    return "\n".join(lines) + "\n"


def write_json(results: Sequence[PairedComparison], json_path: str | pathlib.Path) -> None:
    """Writes the comparisons next to ``eval --json``'s file as ``NAME.compare.json`` (nothing when none)."""
    import json

    if results:
        pathlib.Path(json_path).with_suffix(".compare.json").write_text(
            json.dumps([r.as_dict() for r in results], indent=2), encoding="utf-8")
