"""Direct-ingress servers that share their ports between replicas and rebind after a crash.

Two changes to how Ray Serve 2.60's direct ingress starts an ingress replica's HTTP and gRPC
servers, made by wrapping the replica module's server starts (:func:`rebind_after_crash`):

* **Shared ports.** Serve gives each ingress replica ports of its own (from a range) and
  leaves the balancing to a proxy in front (its HAProxy mode). Under ``modelweave run
  --direct-ingress`` (:data:`modelweave.serving.SHARED_PORTS_ENV` set) every replica binds the
  same two ports with ``SO_REUSEPORT`` instead, and the kernel spreads client connections over
  the replicas' listeners: several ingress replicas (``num_replicas``, autoscaling) answer on
  one address with no proxy hop, and a dead replica's listener simply stops getting
  connections while the others keep answering. The port Serve allocated to the replica is
  then only a token in its bookkeeping. Another program cannot join: the kernel shares a port
  only between sockets of the same user that all set ``SO_REUSEPORT``, and ``modelweave run``
  refuses to start when something already listens on its ports
  (:func:`modelweave.serving.direct_ingress_ports_taken`).
* **Rebinding after a crash.** Serve binds the HTTP server *without* ``SO_REUSEADDR``. When a
  replica dies while clients hold connections to it (keep-alive: the normal case), the kernel
  keeps those connections' server ends (FIN_WAIT_2, then TIME_WAIT) on the port for up to a
  minute, and the replacement's ``bind`` fails with ``EADDRINUSE``. Serve then *blocks the port
  for good* (it concludes another program owns it), and every later replica failed with "No
  available ports": the graph stayed down until restart (seen in CI; reproduced with one idle
  keep-alive connection). The wrapped start sets ``SO_REUSEADDR`` (through Ray's own
  ``enable_so_reuseport`` switch, which also sets ``SO_REUSEPORT``); with Serve's own ports (no
  sharing) a probe first still refuses a port some process *listens* on, so a real conflict fails
  exactly as before.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from typing import Any

from modelweave.ports import refuse_if_listening
from modelweave.serving import SHARED_PORTS_ENV

logger = logging.getLogger("modelweave.ingress")

#: Set on the wrappers so a second call does not wrap twice.
_MARK = "_modelweave_rebind"


def shared_ports(environ: dict[str, str] | None = None) -> tuple[int, int] | None:
    """The ``(http, grpc)`` ports every ingress replica binds, or None (Serve's own ports).

    Raises:
        ValueError: the variable is set but is not ``"<http port>:<grpc port>"``.
    """
    value = (os.environ if environ is None else environ).get(SHARED_PORTS_ENV)
    if not value:
        return None
    try:
        http, grpc = (int(part) for part in value.split(":"))
    except ValueError:
        raise ValueError(f"{SHARED_PORTS_ENV}={value!r}: expected '<http port>:<grpc port>'") from None
    return http, grpc


def _with_port(options: Any, port: int) -> Any:
    """A copy of Serve's HTTP or gRPC options (pydantic) with ``port`` replaced."""
    copy = getattr(options, "model_copy", None) or getattr(options, "copy", None)
    if copy is None:
        raise TypeError(f"cannot copy {type(options).__name__}")
    return copy(update={"port": port})


def _wrap(original: Callable[..., Any], port: int | None, probe: bool) -> Callable[..., Any]:
    async def start(handler: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        if port is not None:
            options = _with_port(options, port)
        elif probe:
            refuse_if_listening(options.host, options.port)
        kwargs["enable_so_reuseport"] = True
        return await original(handler, options, *args, **kwargs)

    setattr(start, _MARK, True)
    return start


def rebind_after_crash(module: Any = None, environ: dict[str, str] | None = None) -> bool:
    """Makes this process's direct-ingress servers share their ports and rebind a released one.

    Does nothing unless Serve's replica module has direct ingress on (its own
    ``RAY_SERVE_ENABLE_DIRECT_INGRESS``, which Serve also turns on for its HAProxy mode, not only
    the environment variable), and (with a warning) when the Ray release in use no longer has the
    functions this wraps with the expected signature. The HTTP server start is always wrapped;
    the gRPC one only to share its port (gRPC servers already reuse addresses).

    Args:
        module: Where Serve's replica looks up ``start_asgi_http_server`` and
            ``start_grpc_server`` (tests pass a stand-in; default ``ray.serve._private.replica``).
        environ: Where :data:`modelweave.serving.SHARED_PORTS_ENV` is read (default ``os.environ``).

    Returns:
        Whether the HTTP server start is wrapped now.
    """
    if module is None:
        from ray.serve._private import replica as module  # Ray's internal seam; checked below
    if not getattr(module, "RAY_SERVE_ENABLE_DIRECT_INGRESS", False):
        return False
    ports = shared_ports(environ)
    for name, port, probe in (("start_asgi_http_server", ports and ports[0], True),
                              ("start_grpc_server", ports and ports[1], False)):
        original = getattr(module, name, None)
        if getattr(original, _MARK, False):
            continue
        if name == "start_grpc_server" and port is None:
            continue  # nothing to change: Serve's gRPC servers already set SO_REUSEADDR
        if original is None or "enable_so_reuseport" not in inspect.signature(original).parameters:
            logger.warning("direct ingress: this Ray has no %s(enable_so_reuseport=...); ingress replicas "
                           "cannot share their port, and one killed with client connections open may leave "
                           "its port blocked until restart", name)
            continue
        setattr(module, name, _wrap(original, port, probe))
    return bool(getattr(getattr(module, "start_asgi_http_server", None), _MARK, False))


__all__ = ["rebind_after_crash", "refuse_if_listening", "shared_ports"]
