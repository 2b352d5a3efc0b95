"""Hostile graph files and arguments get a one-line error and exit 2 from the CLI, never a traceback
(click's runner, in-process: none of these commands start Ray)."""

from __future__ import annotations

import pathlib

import pytest
from click.testing import CliRunner

from modelweave.cli import main

pytestmark = pytest.mark.timeout(60)

GOOD = """name: x
flow: {kind: model, name: a, impl: "modelweave.examples.rules:LexiconSentiment", params: {language: en}}
"""


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def graph_file(tmp_path: pathlib.Path, text: str | bytes, name: str = "g.yaml") -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def laughs(depth: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, depth + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + f"\nname: x\nflow: {{kind: model, name: a, impl: m:f, params: {{p: *a{depth}}}}}\n"


@pytest.mark.parametrize(("text", "message"), [
    (b"name: x\nflow: \xff\xfe\n", "is not UTF-8 text"),
    (GOOD + "flow: {kind: model, name: b, impl: m:f}\n", "found duplicate key 'flow'"),
    ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    (laughs(6), "more than 200,000 values"),
    (GOOD.replace("modelweave.examples.rules:LexiconSentiment", ".rel:Foo"), "cannot import module '.rel'"),
    (GOOD + "prepare: [no.such:fn]\n", "prepare[0]: cannot import module 'no.such'"),
    (GOOD.replace("params: {language: en}", "params: {language: en}, deployment: "
                  "{ray_actor_options: {num_cpus: .inf}}"), "Input should be a finite number"),
])
def test_a_bad_graph_file_is_a_one_line_error(tmp_path: pathlib.Path, text: str | bytes, message: str) -> None:
    code, output = invoke("check", graph_file(tmp_path, text))
    assert code == 2 and message in output, output
    assert "Traceback" not in output


def test_the_good_graph_passes(tmp_path: pathlib.Path) -> None:
    code, output = invoke("check", graph_file(tmp_path, GOOD))
    assert code == 0 and "ok: graph 'x'" in output


@pytest.mark.parametrize(("args", "message"), [
    (["build", "{g}", "--insecure", "-o", "{tmp}/no/such/dir/x.yaml"], "-o {tmp}/no/such/dir/x.yaml: No such file"),
    (["draw", "{g}", "--mermaid", "{tmp}/no/such/dir/x.mmd"], "--mermaid {tmp}/no/such/dir/x.mmd: No such file"),
    (["draw", "{g}", "--stats", "{tmp}/missing.json"], "--stats {tmp}/missing.json: cannot read node statistics"),
    (["draw", "{g}", "--stats", "{tmp}/list.json"], "cannot read node statistics"),
    (["build", "{g}", "--insecure", "-o", "{tmp}/x.yaml", "--num-cpus", "nan"], "not a finite number of CPUs"),
    (["build", "{g}", "--insecure", "-o", "{tmp}/x.yaml", "--http-port", "-5"], "--http-port"),
    (["build", "{g}", "--insecure", "-o", "{tmp}/x.yaml", "--grpc-port", "99999"], "--grpc-port"),
    (["call", "x", "hi", "--timeout-ms", "-5"], "--timeout-ms"),
])
def test_a_bad_argument_is_a_one_line_error(tmp_path: pathlib.Path, args: list[str], message: str) -> None:
    (tmp_path / "list.json").write_text('[{"name": "x"}]')
    g = graph_file(tmp_path, GOOD)
    code, output = invoke(*(a.format(g=g, tmp=tmp_path) for a in args))
    assert code == 2 and message.format(tmp=tmp_path) in output, output
    assert "Traceback" not in output
