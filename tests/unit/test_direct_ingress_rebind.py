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

from deployments.direct_ingress import rebind_after_crash, refuse_if_listening


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

    return types.SimpleNamespace(start_asgi_http_server=start_asgi_http_server,
                                 RAY_SERVE_ENABLE_DIRECT_INGRESS=direct), calls


def test_the_wrapped_start_asks_for_address_reuse_once_wrapped():
    module, calls = _stand_in()
    assert rebind_after_crash(module) is True
    first = module.start_asgi_http_server
    assert rebind_after_crash(module) is True and module.start_asgi_http_server is first  # not twice
    port = _server_end_left_closing()
    options = types.SimpleNamespace(host="127.0.0.1", port=port)
    assert asyncio.run(module.start_asgi_http_server("app", options, event_loop=None)) == "started"
    assert calls == [{"app": "app", "port": port, "reuse": True}]


def test_a_listening_port_never_reaches_serves_start():
    module, calls = _stand_in()
    rebind_after_crash(module)
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
    assert rebind_after_crash() is True
    assert getattr(replica.start_asgi_http_server, "_modelweave_rebind", False)
