"""`modelweave run --direct-ingress`: the ingress replica itself answers on the public ports.

Real CLI, real embedded Ray: HTTPS and gRPC with token auth on the replicas' own servers, two
ingress replicas sharing the ports (no Serve proxy on them), a killed replica losing no request
and replaced on the same ports, a clean stop, and the refusals that need no Ray.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import time

import httpx
import psutil
import yaml
from cli_helpers import REPO, cli, self_signed_cert, start_server

TOKEN = "e2e-direct-0123456789abcdefghij"
BODY = {"input": {"text": {"content": "great, thanks"}}}


def _listeners(port: int) -> set[int]:
    """Pids of the processes listening on ``port``."""
    return {c.pid for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}


def _wait_for_listeners(port: int, count: int, timeout_s: float, without: int | None = None) -> set[int]:
    """Waits until ``count`` processes (none of them ``without``) listen on ``port``."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = _listeners(port) - {without}
        if len(pids) >= count:
            return pids
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(pids)} process(es) listen on port {port}, expected {count}")
        time.sleep(0.2)


def _served_by(port: int) -> dict[int, int]:
    """Server-side connection end's local address pid per client port (connections to ``port``)."""
    return {c.raddr.port: c.pid for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port and c.raddr and c.pid}


def _title(proc: psutil.Process) -> str:
    # Ray sets worker titles such as "ray::ServeReplica:demo:demo-ingress" (RAY_NOTES).
    return " ".join(proc.cmdline()) or proc.name()


def test_direct_ingress_replicas_share_the_ports_and_a_killed_one_loses_no_request(tmp_path: pathlib.Path):
    """Two ingress replicas on the same two ports (SO_REUSEPORT): the kernel spreads connections
    over both, a killed one's clients go to the other at once, and its successor rebinds the
    ports even with connections to the dead one still closing."""
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"ci:{TOKEN}\n")
    cert, key = self_signed_cert(tmp_path)
    graph = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    graph.setdefault("ingress", {})["num_replicas"] = 2
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(graph, sort_keys=False))
    server = start_server(str(tmp_path / "demo.yaml"),
                          extra_args=["--direct-ingress", "--auth-tokens", str(tokens),
                                      "--tls-cert", str(cert), "--tls-key", str(key)])
    auth = {"authorization": f"Bearer {TOKEN}"}
    http_port, grpc_port = int(server.http.rsplit(":", 1)[1]), int(server.grpc.rsplit(":", 1)[1])
    url = server.http.replace("http://", "https://") + "/demo"
    clients: list[httpx.Client] = []
    try:
        replicas = _wait_for_listeners(http_port, 2, timeout_s=60)
        assert _wait_for_listeners(grpc_port, 2, timeout_s=60) == replicas
        assert all("ServeReplica" in _title(psutil.Process(pid)) for pid in replicas)
        assert any("Direct:" in line for line in server.stdout)
        with httpx.Client(verify=str(cert), timeout=60) as client:
            assert client.post(url, json=BODY).status_code == 401
        ok = cli("call", "demo", "great, thanks", "--grpc", server.grpc, "--token", TOKEN)
        assert ok.returncode == 0 and "positive" in ok.stdout, ok.stdout + ok.stderr

        # Keep-alive clients: the kernel hands each new connection to one of the two listeners.
        for _ in range(16):
            clients.append(httpx.Client(verify=str(cert), timeout=60))
            r = clients[-1].post(url, json=BODY, headers=auth)
            assert r.status_code == 200, r.text
            assert r.json()["result"]["classification"]["label"] == "positive"
        spread = set(_served_by(http_port).values())
        assert spread == replicas, f"16 connections all went to {spread} of {replicas}"

        victim = min(replicas)
        # An idle connection to the victim open across the kill leaves the dead server's end on
        # the port (FIN_WAIT_2, then TIME_WAIT); Serve's own bind (no SO_REUSEADDR) then failed
        # and blocked the port for good (deployments/direct_ingress.py).
        idle: list[socket.socket] = []
        while not any(_served_by(http_port).get(s.getsockname()[1]) == victim for s in idle):
            assert len(idle) < 64, "no idle connection reached the victim replica"
            idle.append(socket.create_connection(("127.0.0.1", http_port), timeout=10))
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)
        time.sleep(1.0)
        for connection in idle:
            connection.close()
        answers = []
        for i in range(20):  # fresh connections: only the survivor listens now
            with httpx.Client(verify=str(cert), timeout=30) as client:
                answers.append(client.post(url, json={"input": {"text": {"content": f"great {i}"}}},
                                           headers=auth).status_code)
        assert answers == [200] * 20, answers

        successor = _wait_for_listeners(http_port, 2, timeout_s=90, without=victim)
        assert victim not in successor and len(successor - replicas) == 1, (replicas, successor)
        # The replica starts its gRPC server after its HTTP one.
        assert _wait_for_listeners(grpc_port, 2, timeout_s=30, without=victim) == successor
        again = cli("call", "demo", "great, thanks", "--grpc", server.grpc, "--token", TOKEN)
        assert again.returncode == 0 and "positive" in again.stdout, again.stdout + again.stderr
    finally:
        for client in clients:
            client.close()
        assert server.stop() == 0, "".join(server.stdout[-40:])


def test_direct_ingress_refuses_what_it_cannot_serve_before_starting_ray():
    r = cli("run", "examples/demo.yaml", "examples/triage-baseline.yaml", "--direct-ingress", timeout=60)
    assert r.returncode == 2 and "one graph (got 2)" in r.stderr
    r = cli("run", "examples/demo.yaml", "--direct-ingress", "--address", "127.0.0.1:1", timeout=60)
    assert r.returncode == 2 and "drop --address" in r.stderr
    assert "starting an embedded Ray" not in r.stderr
    # The replicas share their ports with SO_REUSEPORT; a second run must not join a port in use.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = cli("run", "examples/demo.yaml", "--direct-ingress", "--http-port", str(taken.getsockname()[1]),
                timeout=60)
    assert r.returncode == 2 and "another process listens on the HTTP port" in r.stderr, r.stderr
    assert "starting an embedded Ray" not in r.stderr
