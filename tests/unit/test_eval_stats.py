"""``modelweave eval`` statistics: Wilson and Newcombe intervals, exact McNemar, paired comparisons."""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any

import pytest
from click.testing import CliRunner
from scipy.stats import binomtest

from modelweave import eval_stats as st
from modelweave import evaluate as ev
from modelweave.checker import check_graph
from modelweave.cli import main
from modelweave.evaluate import RowOutcome, VersionReport
from modelweave.spec import parse_graph


def report(name: str, correct: list[bool], removed: str = "") -> VersionReport:
    """A version's report with only the figures the comparison reads."""
    n = len(correct)
    return VersionReport(name=name, rows=n, accuracy=sum(correct) / n, macro_f1=0.5, p50_ms=1.0, p99_ms=2.0,
                         cpu_ms=0.5, cost=1.0, errors=0, removed=removed, correct=correct)


def graph(name: str, impl: str) -> dict[str, Any]:
    """One model answering from the row's text (see sweep_fakes)."""
    return {"name": name, "input": ["Text"], "output": ["Classification"],
            "flow": {"kind": "chain", "name": "main",
                     "steps": [{"kind": "model", "name": "m", "impl": f"sweep_fakes:{impl}", "cost": 1.0}]}}


def test_wilson_matches_the_closed_form() -> None:
    z = 1.959963984540054  # the 97.5 % normal quantile
    p, n = 0.81, 100
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = st.wilson_interval(81, 100)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert (low, high) == pytest.approx((0.7222, 0.8749), abs=5e-5)
    assert st.wilson_interval(0, 0) == (0.0, 1.0)
    assert st.wilson_interval(0, 20)[0] == 0.0 and st.wilson_interval(20, 20)[1] == 1.0
    assert st.wilson_interval(81, 100, 0.99)[0] < low  # a higher level widens it
    for bad in ((5, 4, 0.95), (-1, 4, 0.95), (1, 4, 1.0)):
        with pytest.raises(ValueError):
            st.wilson_interval(*bad)


def test_newcombe_matches_a_published_example() -> None:
    # Cavo et al. (2012) in Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables"
    # (2017), ch. 8: Newcombe square-and-add, estimate -0.0621, 95 % CI -0.1186 to -0.0046.
    low, high = st.newcombe_paired_interval(59, 6, 16, 80)
    assert (low, high) == pytest.approx((-0.1186, -0.0046), abs=5e-5)


@pytest.mark.parametrize("table", [(59, 6, 16, 80), (1, 1, 7, 12), (300, 20, 10, 0), (0, 3, 0, 0), (50, 0, 0, 50),
                                   (10, 0, 0, 0), (0, 0, 0, 10), (0, 10, 10, 0)])
def test_newcombe_interval_properties(table: tuple[int, int, int, int]) -> None:
    a, b, c, d = table
    n = a + b + c + d
    low, high = st.newcombe_paired_interval(a, b, c, d)
    assert -1.0 <= low <= (b - c) / n <= high <= 1.0
    bigger = st.newcombe_paired_interval(*(4 * x for x in table))
    assert bigger[1] - bigger[0] < high - low  # more rows, narrower


def test_newcombe_no_discordant_pairs_is_centred_on_zero() -> None:
    low, high = st.newcombe_paired_interval(70, 0, 0, 30)
    assert low < 0 < high and abs(low + high) < 1e-9
    assert st.newcombe_paired_interval(0, 0, 0, 0) == (-1.0, 1.0)


@pytest.mark.parametrize(("b", "c"), [(0, 1), (0, 5), (3, 12), (6, 16), (12, 3), (40, 41), (7, 7), (1, 30),
                                      (150, 210), (480, 520)])
def test_mcnemar_matches_scipy(b: int, c: int) -> None:
    assert st.mcnemar_exact_p(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_mcnemar_large_discordant_counts() -> None:
    started = time.perf_counter()
    assert st.mcnemar_exact_p(9800, 10200) == pytest.approx(binomtest(9800, 20000, 0.5).pvalue, rel=1e-8)
    assert st.mcnemar_exact_p(10000, 10000) == 1.0
    assert 0.0 <= st.mcnemar_exact_p(0, 20000) < 1e-300
    assert time.perf_counter() - started < 1.0
    assert st.mcnemar_exact_p(0, 0) == 1.0


def test_none_predictions_count_wrong() -> None:
    assert st.correctness(["a", "b", "c"], [None, "b", "a"]) == [False, True, False]
    checked = check_graph(parse_graph(graph("toy", "Cheap")))
    outcomes = [RowOutcome("pos", None, None, "INTERNAL: boom"), RowOutcome("pos", "pos", None)]
    summary = ev.summarise("toy", checked, outcomes)
    assert summary.correct == [False, True] and summary.accuracy == 0.5 and summary.errors == 1


def test_paired_comparison_counts_and_rejects_other_rows() -> None:
    result = st.paired_comparison([True, True, False, False], [True, False, True, True], name="new", reference="old")
    assert (result.rows, result.only_this_right, result.only_reference_right) == (4, 1, 2)
    assert result.difference == pytest.approx(-0.25) and result.p_value == 1.0
    assert result.as_dict()["verdict"] == "no significant difference"
    with pytest.raises(ValueError, match="not paired"):
        st.paired_comparison([True], [True, False], name="new", reference="old")


def test_comparisons_verdicts_and_reference() -> None:
    base = [True] * 70 + [False] * 30
    better = [True] * 95 + [False] * 5          # every row base got, plus 25 more
    equal = [False] * 3 + [True] * 70 + [False] * 27  # same accuracy, 3 rows swapped
    reports = [report("base", base), report("better", better), report("equal", equal),
               report("better - m", base, removed="better/m")]
    text = ev.comparisons(reports)
    assert "Paired comparison with `base`" in text
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert lines["better"].endswith("| better |") and "| +0.250 |" in lines["better"]
    assert lines["equal"].endswith("| no significant difference |")
    assert "better - m" not in lines  # ablations are covered by the contributions table
    worse = ev.comparisons(reports, "better")
    assert "| base | -0.250 |" in worse and worse.count("| worse |") == 2
    with pytest.raises(ValueError, match=r"no version named 'better - m' \(versions: base, better, equal\)"):
        ev.comparisons(reports, "better - m")
    assert ev.comparisons(reports[:1]) == ""
    short = ev.comparisons([report("base", base), report("cut", better[:50])])
    assert "Not paired (a different number of rows): `cut`" in short


def test_markdown_and_json_carry_the_interval_not_the_rows() -> None:
    r = report("base", [True] * 70 + [False] * 30)
    low, high = st.wilson_interval(70, 100)
    assert f"| 0.700 ({low:.3f}-{high:.3f}) |" in ev.markdown([r])
    data = ev.as_dict(r)
    assert "correct" not in data and (data["accuracy_low"], data["accuracy_high"]) == (low, high)
    for key in ("name", "rows", "accuracy", "macro_f1", "p50_ms", "p99_ms", "cpu_ms", "cost", "errors", "reach",
                "node_ms", "node_share", "removed"):
        assert key in data
    assert len(json.dumps(data)) < 500


def _files(tmp_path: pathlib.Path) -> tuple[list[str], pathlib.Path]:
    paths = []
    for name, impl in (("cheap", "Cheap"), ("expensive", "Expensive")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps(graph(name, impl)))
        paths.append(str(path))
    data = tmp_path / "rows.csv"
    data.write_text("text,label\n" + "".join(f"0.9 {'neg' if i % 3 else 'pos'} pos,pos\n" for i in range(30)))
    return paths, data


def test_eval_cli_compare_to(tmp_path: pathlib.Path) -> None:
    paths, data = _files(tmp_path)
    out = CliRunner().invoke(main, ["eval", *paths, "--data", str(data), "--runner", "local",
                                    "--compare-to", "cheap", "--json", str(tmp_path / "r.json")])
    assert out.exit_code == 0, out.output
    assert "Paired comparison with `cheap`" in out.output and "| expensive | +0.667 |" in out.output
    assert "| better |" in out.output
    assert isinstance(json.loads((tmp_path / "r.json").read_text()), list)
    compared = json.loads((tmp_path / "r.compare.json").read_text())
    assert compared[0]["name"] == "expensive" and compared[0]["verdict"] == "better"


def test_eval_cli_bad_compare_to_fails_before_evaluating(tmp_path: pathlib.Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    paths, data = _files(tmp_path)

    def too_far(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("went on despite a bad --compare-to")

    # Reading the data comes before the prepare hooks, Ray and the evaluation: none may run.
    monkeypatch.setattr(ev, "load_table", too_far)
    monkeypatch.setattr(ev, "evaluate", too_far)
    out = CliRunner().invoke(main, ["eval", *paths, "--data", str(data), "--compare-to", "nope"])
    assert out.exit_code == 2
    assert "error: --compare-to nope: no version named nope (versions: cheap, expensive)" in out.output


def test_eval_cli_reach_columns_name_model_nodes(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths, data = _files(tmp_path)
    out = CliRunner().invoke(main, ["eval", *paths, "--data", str(data), "--runner", "local", "--reach", "m"])
    assert out.exit_code == 0, out.output
    header = next(line for line in out.output.splitlines() if line.startswith("| version |"))
    assert header.endswith("| reach m |")  # every request reaches m: the default would show no column

    def too_far(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("went on despite a bad --reach")

    monkeypatch.setattr(ev, "load_table", too_far)
    bad = CliRunner().invoke(main, ["eval", *paths, "--data", str(data), "--reach", "nope"])
    assert bad.exit_code == 2
    assert "error: --reach nope: no model node named nope (model nodes: m)" in bad.output

