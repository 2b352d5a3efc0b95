"""Free TCP ports for tests: :func:`modelweave.ports.free_port` (why not ``bind(0)``: see there)."""

from modelweave.ports import free_port

__all__ = ["free_port"]
