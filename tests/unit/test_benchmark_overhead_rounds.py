"""overhead.py's per-round spread of the CPU ratio (rounds paired in the order they ran)."""

from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))

from overhead import Sample, round_spread  # noqa: E402


def _sample(rounds: list[tuple[int, dict[str, float]]]) -> Sample:
    merged = Sample()
    for requests, cpu_s in rounds:
        merged.extend(Sample(latencies=[0.001] * requests, wall_s=1.0, cpu_s=cpu_s))
    return merged


def test_rounds_keep_their_own_cpu_per_request_and_the_merge_keeps_the_total() -> None:
    s = _sample([(100, {"ingress": 0.2, "proxy": 0.1}), (50, {"ingress": 0.2, "proxy": 0.0})])
    assert s.round_cpu_us("ingress") == pytest.approx([2000.0, 4000.0])
    assert s.round_cpu_us() == pytest.approx([3000.0, 4000.0])
    assert s.cpu_us("ingress") == pytest.approx(0.4 / 150 * 1e6)


def test_round_spread_pairs_rounds_in_order() -> None:
    hw = _sample([(100, {"ingress": 0.10}), (100, {"ingress": 0.20}), (100, {"ingress": 0.10})])
    mw = _sample([(100, {"ingress": 0.11}), (100, {"ingress": 0.20}), (100, {"ingress": 0.13})])
    assert round_spread(hw, mw, ("ingress",)) == "1.00-1.30"
    assert round_spread(_sample([(100, {"ingress": 0.1})]), _sample([(100, {"ingress": 0.1})]), ("ingress",)) == ""
