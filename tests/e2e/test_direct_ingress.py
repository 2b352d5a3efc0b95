"""`modelweave run --direct-ingress`: the ingress replica itself answers on the public ports.

Real CLI, real embedded Ray: HTTPS and gRPC with token auth on the replica's own servers, no
Serve proxy on those ports, a killed ingress replica replaced on the same ports, a clean stop,
and the refusals that need no Ray.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import time

import httpx
import psutil
from cli_helpers import cli, self_signed_cert, start_server

TOKEN = "e2e-direct-0123456789abcdefghij"
BODY = {"input": {"text": {"content": "great, thanks"}}}


def _listener(port: int) -> psutil.Process:
    """The process listening on ``port``."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    raise AssertionError(f"nothing listens on port {port}")


def _wait_for_listener(port: int, timeout_s: float) -> psutil.Process:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return _listener(port)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _title(proc: psutil.Process) -> str:
    # Ray sets worker titles such as "ray::ServeReplica:demo:demo-ingress" (RAY_NOTES).
    return " ".join(proc.cmdline()) or proc.name()


def test_direct_ingress_serves_http_and_grpc_from_the_replica_and_survives_its_death(tmp_path: pathlib.Path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"ci:{TOKEN}\n")
    cert, key = self_signed_cert(tmp_path)
    server = start_server("examples/demo.yaml", extra_args=["--direct-ingress", "--auth-tokens", str(tokens),
                                                             "--tls-cert", str(cert), "--tls-key", str(key)])
    auth = {"authorization": f"Bearer {TOKEN}"}
    http_port, grpc_port = int(server.http.rsplit(":", 1)[1]), int(server.grpc.rsplit(":", 1)[1])
    base = server.http.replace("http://", "https://")
    client = httpx.Client(verify=str(cert), timeout=60)
    try:
        assert client.post(f"{base}/demo", json=BODY).status_code == 401
        r = client.post(f"{base}/demo", json=BODY, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["result"]["classification"]["label"] == "positive"
        ok = cli("call", "demo", "great, thanks", "--grpc", server.grpc, "--token", TOKEN)
        assert ok.returncode == 0 and "positive" in ok.stdout, ok.stdout + ok.stderr
        replica = _listener(http_port)
        assert "ServeReplica" in _title(replica) and "ProxyActor" not in _title(replica)
        assert _listener(grpc_port).pid == replica.pid
        assert any("Direct:" in line for line in server.stdout)

        # An idle client connection open across the kill leaves the dead server's end of it on
        # the port (FIN_WAIT_2, then TIME_WAIT); Serve's own bind (no SO_REUSEADDR) then failed
        # and blocked the port for good (deployments/direct_ingress.py).
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for port in (http_port, grpc_port)]
        os.kill(replica.pid, signal.SIGKILL)
        time.sleep(1.0)
        for connection in idle:
            connection.close()
        deadline, answer = time.monotonic() + 90, None
        while time.monotonic() < deadline:
            try:
                answer = client.post(f"{base}/demo", json=BODY, headers=auth, timeout=10)
                if answer.status_code == 200:
                    break
            except httpx.HTTPError:  # nothing listens until Serve has started the new replica
                pass
            time.sleep(0.5)
        assert answer is not None and answer.status_code == 200, "no new ingress replica on the same port"
        assert _listener(http_port).pid != replica.pid
        # The replica starts its gRPC server after its HTTP one: HTTP may answer a moment earlier.
        assert _wait_for_listener(grpc_port, timeout_s=30).pid == _listener(http_port).pid
        again = cli("call", "demo", "great, thanks", "--grpc", server.grpc, "--token", TOKEN)
        assert again.returncode == 0 and "positive" in again.stdout, again.stdout + again.stderr
    finally:
        client.close()
        assert server.stop() == 0, "".join(server.stdout[-40:])


def test_direct_ingress_refuses_what_it_cannot_serve_before_starting_ray():
    r = cli("run", "examples/demo.yaml", "examples/triage-baseline.yaml", "--direct-ingress", timeout=60)
    assert r.returncode == 2 and "one graph (got 2)" in r.stderr
    r = cli("run", "examples/demo.yaml", "--direct-ingress", "--address", "127.0.0.1:1", timeout=60)
    assert r.returncode == 2 and "drop --address" in r.stderr
    assert "starting an embedded Ray" not in r.stderr
