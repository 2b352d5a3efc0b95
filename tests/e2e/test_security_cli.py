"""The CLI's safe defaults: exposed hosts need tokens, configs hold digests, HTTPS with a fresh certificate."""

from __future__ import annotations

import pathlib

import httpx
import pytest
import yaml
from cli_helpers import cli, self_signed_cert, start_server

TOKEN = "e2e-token-0123456789abcdefghij"


def _tokens(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "tokens.txt"
    path.write_text(f"# rotation: two tokens for one client\nci:{TOKEN}\nci:{TOKEN}-next\n")
    return path


def test_run_on_an_exposed_host_without_tokens_exits_2_and_says_how():
    # Refused before Ray starts: fast, and nothing to clean up.
    r = cli("run", "examples/demo.yaml", "--host", "0.0.0.0", timeout=60)
    assert r.returncode == 2
    assert "--auth-tokens FILE" in r.stderr and "--insecure" in r.stderr
    r = cli("run", "examples/demo.yaml", "--host", "0.0.0.0", "--auth-tokens", "/nonexistent/tokens", timeout=60)
    assert r.returncode == 2 and "cannot read token file" in r.stderr


def test_build_follows_the_same_rule_and_stores_only_digests(tmp_path: pathlib.Path):
    out = tmp_path / "serve.yaml"
    r = cli("build", "examples/demo.yaml", "-o", str(out))  # build's default host is 0.0.0.0
    assert r.returncode == 2 and "--auth-tokens" in r.stderr and not out.exists()
    r = cli("build", "examples/demo.yaml", "-o", str(out), "--auth-tokens", str(_tokens(tmp_path)))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert TOKEN not in text and "INSECURE" not in text
    config = yaml.safe_load(text)
    tokens = config["applications"][0]["args"]["graph"]["ingress"]["auth"]["tokens"]
    assert [t["name"] for t in tokens] == ["ci", "ci"] and all(len(t["sha256"]) == 64 for t in tokens)
    from deployments.app import build_app

    assert build_app(config["applications"][0]["args"]) is not None  # `serve run` accepts it
    r = cli("build", "examples/demo.yaml", "-o", str(out), "--insecure")
    assert r.returncode == 0 and "INSECURE" in out.read_text()


def test_run_serves_https_with_token_auth(tmp_path: pathlib.Path):
    cert, key = self_signed_cert(tmp_path)
    server = start_server("examples/demo.yaml", extra_args=["--tls-cert", str(cert), "--tls-key", str(key),
                                                             "--auth-tokens", str(_tokens(tmp_path))])
    try:
        base = server.http.replace("http://", "https://")
        body = {"input": {"text": {"content": "great, thanks"}}}
        with httpx.Client(verify=str(cert), timeout=60) as client:
            assert client.post(f"{base}/demo", json=body).status_code == 401
            r = client.post(f"{base}/demo", json=body, headers={"authorization": f"Bearer {TOKEN}-next"})
            assert r.status_code == 200, r.text
            assert r.json()["trace"]["caller"] == "ci"
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
            httpx.post(f"{server.http}/demo", json=body, timeout=10)
        assert any("https://" in line for line in server.stdout)
        # gRPC (no TLS in Ray Serve 2.60) needs the same token; `modelweave call --token` sends it.
        refused = cli("call", "demo", "great, thanks", "--grpc", server.grpc)
        assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stdout
        ok = cli("call", "demo", "great, thanks", "--grpc", server.grpc, "--token", TOKEN)
        assert ok.returncode == 0 and "positive" in ok.stdout, ok.stdout + ok.stderr
    finally:
        assert server.stop() == 0
