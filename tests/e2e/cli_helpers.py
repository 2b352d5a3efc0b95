"""Helpers for end-to-end tests: the real `modelweave` CLI in a subprocess on free ports."""

from __future__ import annotations

import datetime
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from modelweave.ports import free_port

REPO = pathlib.Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Runs `modelweave ARGS` to completion."""
    return subprocess.run([sys.executable, "-m", "modelweave.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@dataclass
class RunningServer:
    """A `modelweave run` subprocess."""

    proc: subprocess.Popen[str]
    http: str
    grpc: str
    stdout: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 90) -> int:
        """Ctrl-C, then wait for a clean exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout)


def start_server(graph: str, ready_timeout: float = 240, extra_args: list[str] | None = None) -> RunningServer:
    """Starts `modelweave run GRAPH [extra_args]` on free ports and waits until it says it is ready."""
    http_port, grpc_port, dash_port = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelweave.cli", "run", graph, "--http-port", str(http_port),
         "--grpc-port", str(grpc_port), "--dashboard-port", str(dash_port), "--metrics-port", str(free_port()),
         *(extra_args or [])],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    server = RunningServer(proc, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")
    ready = threading.Event()

    def _pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.stdout.append(line)
            if "Press Ctrl-C" in line:
                ready.set()

    threading.Thread(target=_pump, daemon=True).start()
    deadline = time.monotonic() + ready_timeout
    while not ready.wait(1.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("modelweave run did not become ready:\n" + "".join(server.stdout[-60:]))
    return server


def self_signed_cert(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A certificate and key for 127.0.0.1 (one day), written to ``tmp_path``: (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
