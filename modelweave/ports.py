"""Free TCP ports for servers started in other processes (tests, benchmarks, Serve's unused proxies).

Why not ``bind(("127.0.0.1", 0))``: the kernel hands out port 0 from its ephemeral range, the
same range every outgoing connection of a running Ray cluster (gRPC channels between raylets,
workers, GCS) takes its local port from. Between picking a port and the server binding it, a
new connection can take it, and Ray Serve's gRPC proxy then dies with "Failed to bind to
address [::]:PORT" (seen in CI). Ports below the ephemeral range and above Ray's worker port
range (10002-19999) are never handed out implicitly, so only another explicit bind can race.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: Ray's default worker ports end at 19999; the kernel's ephemeral range usually starts at 32768.
_LOW = 20000
_RANDOM = random.Random()
_HANDED_OUT: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    """Whether PORT is free on loopback and on the wildcard addresses servers bind."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((host, port))
        except OSError as exc:
            if family == socket.AF_INET6 and exc.errno in (97, 99):  # no IPv6 on this machine
                continue
            return False
    return True


def free_port() -> int:
    """An unused TCP port outside the ephemeral range, not handed out before in this process."""
    high = max(_LOW + 1000, _ephemeral_start() - 1)
    for _ in range(500):
        port = _RANDOM.randint(_LOW, high)
        if port not in _HANDED_OUT and _bindable(port):
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no free TCP port found in {_LOW}-{high}")


def refuse_if_listening(host: str, port: int) -> None:
    """Raises what Serve's own bind raises if a process listens on ``host:port``.

    A probe socket with ``SO_REUSEADDR`` binds next to closing connections (TIME_WAIT,
    FIN_WAIT_2) but not next to a listening socket, which is the conflict that must still fail.

    Raises:
        RuntimeError: Caused by the ``OSError`` (``EADDRINUSE``), as Serve's
            ``start_asgi_http_server`` raises it, so Serve's retry and port-blocking logic sees
            the same error it would have seen.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise RuntimeError(f"Failed to bind to address '{host}:{port}'.") from exc
