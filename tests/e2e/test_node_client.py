"""End to end: the Node.js gRPC client in examples/clients/node against `modelweave run`.

The client is installed (``npm ci``) into a temporary copy while a real ``modelweave run
examples/demo.yaml`` subprocess boots its own Ray cluster; the test then calls Infer and
InferStream through Serve's gRPC proxy and finally stops the server with SIGINT, as a
person would with Ctrl-C. Needs ``node`` and ``npm`` (skipped without them) and the npm
registry (or a warm npm cache).
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from modelweave.ports import free_port

pytestmark = pytest.mark.e2e

REPO = pathlib.Path(__file__).resolve().parents[2]
CLIENT_DIR = REPO / "examples" / "clients" / "node"
PROTOS = REPO / "protos"
READY_LINE = "Press Ctrl-C"
START_TIMEOUT_S = 75.0
STOP_TIMEOUT_S = 45.0
TEXT = "My order arrived broken and I want a refund"

NODE = shutil.which("node")
NPM = shutil.which("npm")
if NODE is None or NPM is None:
    pytest.skip("node and npm are needed for the Node.js client test", allow_module_level=True)

#: npm failures that mean "no registry here", not "the example is broken".
_OFFLINE_MARKERS = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "ENETUNREACH")


@dataclass
class Server:
    """A running ``modelweave run`` subprocess."""

    proc: subprocess.Popen[str]
    grpc_addr: str
    stdout: queue.Queue[str]
    stderr_path: pathlib.Path

    def stderr_tail(self, chars: int = 3000) -> str:
        """The end of the server's stderr (for failure messages)."""
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""


def _pump(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


@pytest.fixture(scope="module")
def server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Starts ``modelweave run examples/demo.yaml`` on free ports (does not wait for it)."""
    log_dir = tmp_path_factory.mktemp("modelweave-run")
    http_port, grpc_port, dashboard_port = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    stderr_path = log_dir / "stderr.log"
    with stderr_path.open("w", encoding="utf-8") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelweave.cli", "run", str(REPO / "examples" / "demo.yaml"),
             "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--dashboard-port", str(dashboard_port),
             "--metrics-port", str(free_port()),
             "--num-cpus", "8"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
            start_new_session=True,  # our SIGINT reaches only this process; the group is ours to clean up
        )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    server = Server(proc=proc, grpc_addr=f"127.0.0.1:{grpc_port}", stdout=lines, stderr_path=stderr_path)
    try:
        yield server
    finally:
        if proc.poll() is None:  # a test failed before the graceful stop; don't leak a cluster
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory, server_process: Server) -> pathlib.Path:
    """A temporary copy of the Node client with its pinned dependencies installed.

    Depends on ``server_process`` only so the install overlaps the server's start-up.
    """
    target = tmp_path_factory.mktemp("node-client") / "node"
    target.mkdir()
    for name in ("package.json", "package-lock.json", "client.js"):
        shutil.copy2(CLIENT_DIR / name, target / name)
    result = subprocess.run([NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=target,
                            capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        if any(marker in output for marker in _OFFLINE_MARKERS):
            pytest.skip(f"npm registry unreachable: {output.strip()[-300:]}")
        pytest.fail(f"npm ci failed ({result.returncode}):\n{output[-3000:]}")
    return target


@pytest.fixture(scope="module")
def grpc_addr(server_process: Server, node_client: pathlib.Path) -> str:
    """Waits for the server's ready line and its gRPC port; returns HOST:PORT."""
    import grpc

    deadline = time.monotonic() + START_TIMEOUT_S
    seen: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no {READY_LINE!r} within {START_TIMEOUT_S:.0f} s; stdout: {''.join(seen)[-2000:]}\n"
                        f"stderr: {server_process.stderr_tail()}")
        try:
            line = server_process.stdout.get(timeout=min(remaining, 1.0))
        except queue.Empty:
            if server_process.proc.poll() is not None:
                pytest.fail(f"modelweave run exited with {server_process.proc.returncode}:\n"
                            f"{server_process.stderr_tail()}")
            continue
        seen.append(line)
        if READY_LINE in line:
            break
    channel = grpc.insecure_channel(server_process.grpc_addr)
    try:
        grpc.channel_ready_future(channel).result(timeout=max(5.0, deadline - time.monotonic()))
    finally:
        channel.close()
    return server_process.grpc_addr


def run_client(client_dir: pathlib.Path, addr: str, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``node client.js ADDR demo TEXT ARGS...`` against the repository's protos."""
    assert NODE is not None
    return subprocess.run([NODE, "client.js", addr, "demo", text, "--protos", str(PROTOS), *args],
                          cwd=client_dir, capture_output=True, text=True, timeout=60)


def json_lines(stdout: str) -> list[dict[str, Any]]:
    """The client's ``--json`` output, one object per line."""
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_infer_returns_the_result_and_trace(node_client: pathlib.Path, grpc_addr: str) -> None:
    """Unary Infer: every output part of the demo graph plus a trace with model spans."""
    done = run_client(node_client, grpc_addr, TEXT, "--rpc", "infer", "--json", "--request-id", "node-e2e-1")
    assert done.returncode == 0, done.stderr
    [line] = json_lines(done.stdout)
    assert line["rpc"] == "Infer"
    response = line["response"]
    assert response["graph"] == "demo"
    result = response["result"]
    assert result["text"]["content"]
    assert result["classification"]["label"] == "negative"
    assert "sorry" in result["generation"]["text"].lower()
    assert result["verdict"]["passed"] is True
    trace = response["trace"]
    assert trace["requestId"] == "node-e2e-1"
    attempts = [s.get("attempt") for s in trace["spans"] if s["node"] == "demo/main/reply/reply-check"]
    assert attempts == [1, 2]  # the first reply lacked an apology; the retry passed
    assert any(s.get("latencyMs", 0) > 0 for s in trace["spans"] if s["kind"] == "model")


def test_infer_stream_emits_spans_then_the_result(node_client: pathlib.Path, grpc_addr: str) -> None:
    """InferStream: span events as hops finish, then exactly one result, last."""
    done = run_client(node_client, grpc_addr, TEXT + " again", "--rpc", "stream", "--json")
    assert done.returncode == 0, done.stderr
    events = [line["event"] for line in json_lines(done.stdout)]
    assert len(events) >= 2
    assert all(e["event"] == "span" for e in events[:-1])
    assert events[-1]["event"] == "result"
    spans = [e["span"] for e in events[:-1]]
    assert any(s["node"].startswith("demo/main/") and s["kind"] == "model" for s in spans)
    assert events[-1]["result"]["result"]["generation"]["text"]
    assert len(events[-1]["result"]["trace"]["spans"]) == len(spans)


def test_human_readable_output_covers_both_rpcs(node_client: pathlib.Path, grpc_addr: str) -> None:
    """Without --json the client calls both RPCs and prints summaries and span lines."""
    done = run_client(node_client, grpc_addr, "thanks, great service")
    assert done.returncode == 0, done.stderr
    assert "== Infer" in done.stdout and "== InferStream" in done.stdout
    assert done.stdout.count("classification: positive") == 2
    assert "[model]" in done.stdout


@pytest.mark.parametrize("rpc", ["infer", "stream"])
def test_empty_text_is_invalid_argument(node_client: pathlib.Path, grpc_addr: str, rpc: str) -> None:
    """An empty text is refused with INVALID_ARGUMENT; the client names it and exits 1."""
    done = run_client(node_client, grpc_addr, "", "--rpc", rpc)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "INVALID_ARGUMENT" in done.stderr
    assert "input.text.content" in done.stderr


def test_ctrl_c_stops_the_server_cleanly(server_process: Server, grpc_addr: str) -> None:
    """SIGINT (Ctrl-C) shuts ``modelweave run`` down with exit code 0 (runs last in this module)."""
    server_process.proc.send_signal(signal.SIGINT)
    try:
        code = server_process.proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"modelweave run did not stop within {STOP_TIMEOUT_S:.0f} s after SIGINT")
    assert code == 0, server_process.stderr_tail()
