"""A killed direct-ingress replica's successor may bind the same HTTP port at once.

Ray Serve 2.60's direct ingress binds each ingress replica's HTTP server *without*
``SO_REUSEADDR``. When a replica dies while clients hold connections to it (keep-alive: the
normal case), the kernel keeps those connections' server ends (FIN_WAIT_2, then TIME_WAIT) on the
port for up to a minute, and the replacement replica's ``bind`` fails with ``EADDRINUSE``. Serve
then *blocks the port for good* (it concludes another program owns it), and with the one-port
range ``modelweave run --direct-ingress`` uses, every later replica fails with "No available
ports": the graph stays down until the process is restarted (seen in CI; reproduced with one
idle keep-alive connection).

:func:`rebind_after_crash` wraps the replica module's server start so the socket gets
``SO_REUSEADDR`` (through Ray's own ``enable_so_reuseport`` switch, which also sets
``SO_REUSEPORT``), after a probe that still refuses a port some process *listens* on, so a real
conflict fails exactly as before. ``SO_REUSEPORT`` cannot let two replicas share the port:
Serve's controller hands a port to one replica at a time and takes it back only when that replica
is gone, and the kernel shares a port only between sockets of the same user that both set it.
"""

from __future__ import annotations

import inspect
import logging
import socket
from typing import Any

logger = logging.getLogger("modelweave.ingress")

#: Set on the wrapper so a second call does not wrap twice.
_MARK = "_modelweave_rebind"


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


def rebind_after_crash(module: Any = None) -> bool:
    """Makes direct-ingress HTTP servers in this process rebind a just-released port.

    Does nothing unless Serve's replica module has direct ingress on (its own
    ``RAY_SERVE_ENABLE_DIRECT_INGRESS``, which Serve also turns on for its HAProxy mode, not only
    the environment variable), and (with a warning) when the Ray release in use no longer has the
    function this wraps with the expected signature.

    Args:
        module: Where Serve's replica looks up ``start_asgi_http_server`` (tests pass a stand-in;
            default ``ray.serve._private.replica``).

    Returns:
        Whether the server start is wrapped now.
    """
    if module is None:
        from ray.serve._private import replica as module  # Ray's internal seam; checked below
    if not getattr(module, "RAY_SERVE_ENABLE_DIRECT_INGRESS", False):
        return False
    original = getattr(module, "start_asgi_http_server", None)
    if getattr(original, _MARK, False):
        return True
    if original is None or "enable_so_reuseport" not in inspect.signature(original).parameters:
        logger.warning("direct ingress: this Ray has no start_asgi_http_server(enable_so_reuseport=...); "
                       "a replica killed with client connections open may leave its port blocked until restart")
        return False

    async def start_asgi_http_server(app: Any, http_options: Any, *args: Any, **kwargs: Any) -> Any:
        refuse_if_listening(http_options.host, http_options.port)
        kwargs["enable_so_reuseport"] = True
        return await original(app, http_options, *args, **kwargs)

    setattr(start_asgi_http_server, _MARK, True)
    module.start_asgi_http_server = start_asgi_http_server
    return True


__all__ = ["rebind_after_crash", "refuse_if_listening"]
