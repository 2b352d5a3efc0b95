"""The real CLI in subprocesses: check, build, run (HTTP + gRPC clients, bad inputs, clean shutdown), call."""

from __future__ import annotations

import pathlib
import socket

import grpc
import httpx
import pytest
import yaml
from cli_helpers import cli, start_server

from modelweave.client import grpc_stub
from modelweave.v1 import messages_pb2 as pb
from modelweave.v1 import service_pb2 as svc

pytestmark = pytest.mark.e2e

BAD_GRAPH = """
name: bad
flow:
  kind: chain
  name: main
  steps:
    - kind: model
      name: reply
      impl: modelweave.examples.rules:TemplateResponder
"""


def test_check_accepts_the_example():
    r = cli("check", "examples/demo.yaml")
    assert r.returncode == 0, r.stderr
    # The demo's rule-based models are non-blocking: all but the two with Serve settings of
    # their own (cheap, negation-aware) run inside the ingress.
    assert "ok: graph 'demo'" in r.stdout and "10 model nodes in 2 model deployments (8 in the ingress)" in r.stdout


def test_check_refuses_a_type_mismatch_naming_node_and_types(tmp_path: pathlib.Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_GRAPH)
    r = cli("check", str(bad))
    assert r.returncode == 2
    assert "bad/main/reply" in r.stderr
    assert "modelweave.v1.Classification" in r.stderr and "missing" in r.stderr


def test_check_refuses_malformed_yaml_and_spec(tmp_path: pathlib.Path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    r = cli("check", str(broken))
    assert r.returncode == 2 and "not valid YAML" in r.stderr
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("name: x\nflow: {kind: route, name: r, default: nope, branches: {a: null}}\n")
    r = cli("check", str(invalid))
    assert r.returncode == 2 and "default branch 'nope'" in r.stderr
    r = cli("check", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "cannot read graph file" in r.stderr


def test_build_writes_a_standard_serve_config(tmp_path: pathlib.Path):
    out = tmp_path / "serve.yaml"
    r = cli("build", "examples/demo.yaml", "-o", str(out), "--http-port", "8123", "--grpc-port", "9123",
            "--insecure")
    assert r.returncode == 0, r.stderr
    config = yaml.safe_load(out.read_text())
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)  # what `serve deploy` validates
    app = config["applications"][0]
    assert app["import_path"] == "deployments.app:build_app" and app["route_prefix"] == "/demo"
    assert config["grpc_options"]["port"] == 9123
    assert {d["name"] for d in app["deployments"]} >= {"cheap", "negation-aware"}
    from deployments.app import build_app

    assert build_app(app["args"]) is not None  # the builder accepts the embedded graph


def test_run_serves_http_and_grpc_and_refuses_bad_input(demo_server):
    r = httpx.post(f"{demo_server.http}/demo", json={"input": {"text": {"content": "terrible, broken"}}},
                   timeout=60)
    assert r.status_code == 200
    assert r.json()["result"]["classification"]["label"] == "negative"
    bad = httpx.post(f"{demo_server.http}/demo", json={"input": {"text": {"content": "x"}}, "bogus": 1}, timeout=30)
    assert bad.status_code == 400 and "bogus" in bad.json()["error"]["message"]
    stub = grpc_stub(demo_server.grpc)
    resp = stub.Infer(svc.InferRequest(input=pb.Message(text=pb.Text(content="thanks, great help"))),
                      metadata=(("application", "demo"),), timeout=60)
    assert resp.result.classification.label == "positive"
    with pytest.raises(grpc.RpcError) as exc:
        stub.Infer(svc.InferRequest(input=pb.Message(text=pb.Text(content="   "))), timeout=30)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input.text.content" in exc.value.details()
    printed = "".join(demo_server.stdout)
    assert f"{demo_server.http}/demo" in printed and demo_server.grpc in printed and "Dashboard: http" in printed


def test_call_command_over_http_and_grpc(demo_server):
    r = cli("call", "demo", "my order is late and broken", "--http", demo_server.http)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "classification: negative" in r.stdout and "demo/main/reply" in r.stdout
    r = cli("call", "demo", "love it", "--grpc", demo_server.grpc, "--stream")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "demo/main/normalise" in r.stdout and "classification: positive" in r.stdout
    r = cli("call", "demo", "hello", "--grpc", demo_server.grpc, "--timeout-ms", "1")
    assert r.returncode == 1 and "DEADLINE_EXCEEDED" in r.stdout


def test_run_refuses_a_bad_graph_before_starting_anything(tmp_path: pathlib.Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_GRAPH)
    r = cli("run", str(bad), timeout=60)
    assert r.returncode == 2 and "bad/main/reply" in r.stderr
    assert "starting an embedded Ray" not in r.stderr


def test_ctrl_c_shuts_down_cleanly(demo_server):
    # Runs last in this module (file order): stop the shared server and check the ports close.
    code = demo_server.stop()
    assert code == 0, "".join(demo_server.stdout[-40:])
    port = int(demo_server.http.rsplit(":", 1)[1])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    assert any("stopped" in line for line in demo_server.stdout)


def test_second_server_after_shutdown_starts_fresh():
    server = start_server("examples/demo.yaml")
    try:
        r = httpx.post(f"{server.http}/demo", json={"input": {"text": {"content": "fine"}}}, timeout=60)
        assert r.status_code == 200
    finally:
        assert server.stop() == 0


def test_draw_writes_mermaid_and_an_image_with_stats(tmp_path: pathlib.Path):
    stats = tmp_path / "stats.json"
    stats.write_text('{"demo/main/sentiment-cache/by-language/multilingual": {"share": 0.25, "mean_ms": 3.5}}')
    r = cli("draw", "examples/demo.yaml", "-o", str(tmp_path / "g.png"), "--mermaid", str(tmp_path / "g.mmd"),
            "--stats", str(stats))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mermaid = (tmp_path / "g.mmd").read_text()
    assert mermaid.startswith("flowchart TB")
    assert "negation-aware<br/>LexiconSentiment<br/>1-2 replicas, 0.1 CPU" in mermaid
    assert '-->|"other: Text · 25%"|' in mermaid and "<br/>25% · 3.5 ms" in mermaid
    assert '-->|"Text"|' in mermaid


def test_committed_cluster_config_matches_the_graphs(tmp_path: pathlib.Path):
    fresh = tmp_path / "serve.yaml"
    r = cli("build", "examples/triage.yaml", "examples/triage-baseline.yaml", "-o", str(fresh), "--insecure")
    assert r.returncode == 0, r.stderr
    committed = (pathlib.Path(__file__).resolve().parents[2] / "cluster" / "serve-triage.yaml").read_text()
    assert fresh.read_text() == committed, "cluster/serve-triage.yaml is stale: rebuild it (see cluster/README.md)"
    service = yaml.safe_load((pathlib.Path(__file__).resolve().parents[2] / "cluster" / "rayservice-triage.yaml")
                             .read_text())
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == yaml.safe_load(committed)
    laptop = tmp_path / "laptop.yaml"
    r = cli("build", "examples/triage.yaml", "examples/triage-baseline.yaml", "-o", str(laptop), "--insecure",
            "--profile", "laptop")
    assert r.returncode == 0, r.stderr
    assert laptop.read_text() == (pathlib.Path(__file__).resolve().parents[2] / "cluster" /
                                  "serve-triage-laptop.yaml").read_text(), "serve-triage-laptop.yaml is stale"


def test_eval_compares_versions_with_ablations_and_feeds_draw(tmp_path: pathlib.Path):
    data = tmp_path / "labelled.csv"
    data.write_text("text,label\n" + "\n".join([
        '"terrible, broken, late",negative', '"great service, thanks",positive', '"it arrived",neutral',
        '"not good at all",negative', '"I love it",positive', '"Le produit est cassé",negative',
    ] * 3) + "\n")
    out = tmp_path / "eval.json"
    r = cli("eval", "examples/demo.yaml", "--data", str(data), "--runner", "local", "--ablate",
            "--markdown", str(tmp_path / "r.md"), "--plot", str(tmp_path / "p.png"), "--json", str(out),
            timeout=180)
    assert r.returncode == 0, r.stderr
    table = (tmp_path / "r.md").read_text()
    assert "| demo | 18 |" in table and "demo - ensemble" in table and "Δ accuracy" in table
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    drawn = cli("draw", "examples/demo.yaml", "--stats", str(out))
    assert drawn.returncode == 0 and "100% ·" in drawn.stdout
    bad = cli("eval", "examples/demo.yaml", "--data", str(data), "--label-column", "nope", "--runner", "local")
    assert bad.returncode == 2 and "no column 'nope'" in bad.stderr
