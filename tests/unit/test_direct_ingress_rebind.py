"""deployments/direct_ingress.py: a dead server's closing connections do not keep its port.

Real sockets on loopback; a stand-in for Ray's replica module, so no cluster is needed.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
import types
from typing import Any

import pytest
from pydantic import BaseModel

from deployments.direct_ingress import rebind_after_crash, refuse_if_listening
from modelweave.serving import SHARED_PORTS_ENV


def _server_end_left_closing() -> int:
    """A port whose server closed first: its end of the connection stays in TIME_WAIT/FIN_WAIT_2."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()  # the server closes first, as a killed process's kernel does
    listener.close()
    time.sleep(0.05)
    client.close()
    return port


def _bind_like_serve(port: int, *, reuse: bool) -> None:
    """What Serve's start_asgi_http_server does with the socket (enable_so_reuseport=reuse)."""
    with socket.socket() as sock:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))


def test_the_plain_bind_fails_next_to_a_closing_connection_and_the_reusing_one_does_not():
    port = _server_end_left_closing()
    with pytest.raises(OSError) as failed:
        _bind_like_serve(port, reuse=False)
    assert failed.value.errno == errno.EADDRINUSE  # the failure this module exists for
    refuse_if_listening("127.0.0.1", port)  # no listener: the probe lets it through
    _bind_like_serve(port, reuse=True)


def test_a_listening_port_is_still_refused_with_the_error_serve_expects():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"127.0.0.1:{port}") as refused:
            refuse_if_listening("127.0.0.1", port)
    # Serve's retry loop reads the cause's errno to decide "port in use".
    assert isinstance(refused.value.__cause__, OSError)
    assert refused.value.__cause__.errno == errno.EADDRINUSE


def _stand_in(direct: bool = True) -> tuple[types.SimpleNamespace, list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []

    async def start_asgi_http_server(app: Any, http_options: Any, *, event_loop: Any = None,
                                     enable_so_reuseport: bool = False) -> str:
        calls.append({"app": app, "port": http_options.port, "reuse": enable_so_reuseport})
        return "started"

    async def start_grpc_server(factory: Any, grpc_options: Any, *, event_loop: Any = None,
                                enable_so_reuseport: bool = False) -> str:
        calls.append({"grpc": factory, "port": grpc_options.port, "reuse": enable_so_reuseport})
        return "started"

    return types.SimpleNamespace(start_asgi_http_server=start_asgi_http_server, start_grpc_server=start_grpc_server,
                                 RAY_SERVE_ENABLE_DIRECT_INGRESS=direct), calls


class _Options(BaseModel):
    """Stands in for Serve's HTTPOptions / gRPCOptions (pydantic models)."""

    host: str = "127.0.0.1"
    port: int
    other: str = "kept"


def test_the_wrapped_start_asks_for_address_reuse_once_wrapped():
    module, calls = _stand_in()
    grpc_start = module.start_grpc_server
    assert rebind_after_crash(module, environ={}) is True
    assert module.start_grpc_server is grpc_start  # Serve's own ports: gRPC needs no change
    first = module.start_asgi_http_server
    assert rebind_after_crash(module) is True and module.start_asgi_http_server is first  # not twice
    port = _server_end_left_closing()
    options = types.SimpleNamespace(host="127.0.0.1", port=port)
    assert asyncio.run(module.start_asgi_http_server("app", options, event_loop=None)) == "started"
    assert calls == [{"app": "app", "port": port, "reuse": True}]


def test_a_listening_port_never_reaches_serves_start():
    module, calls = _stand_in()
    rebind_after_crash(module, environ={})
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        options = types.SimpleNamespace(host="127.0.0.1", port=other.getsockname()[1])
        with pytest.raises(RuntimeError):
            asyncio.run(module.start_asgi_http_server("app", options))
    assert calls == []


def test_nothing_is_wrapped_without_direct_ingress_or_on_an_unknown_ray(caplog: pytest.LogCaptureFixture):
    module, _ = _stand_in(direct=False)
    original = module.start_asgi_http_server
    assert rebind_after_crash(module) is False and module.start_asgi_http_server is original

    async def renamed(app: Any, http_options: Any) -> None:
        return None

    other_ray = types.SimpleNamespace(start_asgi_http_server=renamed, RAY_SERVE_ENABLE_DIRECT_INGRESS=True)
    assert rebind_after_crash(other_ray) is False and other_ray.start_asgi_http_server is renamed
    assert "enable_so_reuseport" in caplog.text


def test_the_real_serve_module_still_has_the_seam(monkeypatch: pytest.MonkeyPatch):
    """If a Ray upgrade moves the function, this fails here rather than in production."""
    from ray.serve._private import replica

    monkeypatch.setattr(replica, "RAY_SERVE_ENABLE_DIRECT_INGRESS", True)  # what the env variable turns on
    monkeypatch.setattr(replica, "start_asgi_http_server", replica.start_asgi_http_server)
    monkeypatch.setattr(replica, "start_grpc_server", replica.start_grpc_server)
    assert rebind_after_crash(environ={SHARED_PORTS_ENV: "8100:9100"}) is True
    assert getattr(replica.start_asgi_http_server, "_modelweave_rebind", False)
    assert getattr(replica.start_grpc_server, "_modelweave_rebind", False)


def test_shared_ports_replace_the_allocated_ones_for_both_servers_with_reuse_and_no_probe():
    module, calls = _stand_in()
    assert rebind_after_crash(module, environ={SHARED_PORTS_ENV: "8100:9100"}) is True
    with socket.socket() as sibling:  # another replica of the graph already listens on the shared port
        sibling.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sibling.bind(("127.0.0.1", 0))
        sibling.listen()
        shared = sibling.getsockname()[1]
        module, calls = _stand_in()
        rebind_after_crash(module, environ={SHARED_PORTS_ENV: f"{shared}:9100"})
        http = _Options(port=30001)  # the token Serve allocated to this replica
        asyncio.run(module.start_asgi_http_server("app", http, event_loop=None))
        asyncio.run(module.start_grpc_server("factory", _Options(port=40001), event_loop=None))
    assert calls == [{"app": "app", "port": shared, "reuse": True}, {"grpc": "factory", "port": 9100, "reuse": True}]
    assert http.port == 30001  # Serve's own options object is left alone


def test_two_listeners_with_reuseport_share_a_port_and_both_get_connections():
    """What the shared mode relies on: the kernel spreads connections over same-user listeners."""
    first = socket.socket()
    first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    first.bind(("127.0.0.1", 0))
    port = first.getsockname()[1]
    second = socket.socket()
    second.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    second.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    second.bind(("127.0.0.1", port))
    try:
        for listener in (first, second):
            listener.listen(64)
            listener.setblocking(False)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(32)]
        accepted = []
        for listener in (first, second):
            count = 0
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                conn.close()
                count += 1
            accepted.append(count)
        assert sum(accepted) == 32 and min(accepted) > 0, accepted
        for client in clients:
            client.close()
    finally:
        first.close()
        second.close()
    with socket.socket() as plain:  # a listener without SO_REUSEPORT cannot join (another program)
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        with pytest.raises(RuntimeError):
            refuse_if_listening("127.0.0.1", plain.getsockname()[1])
