"""One root exception with a canonical status; transports map the status once.

Every error that crosses a module boundary is a :class:`ModelweaveError` carrying a
:class:`Status`. The HTTP and gRPC ingresses each hold one mapping table from
``Status`` to their own codes (see ``deployments/ingress.py``), so the core never
knows about transports.
"""

from __future__ import annotations

import enum
from typing import Any


class Status(enum.StrEnum):
    """Canonical status names (the gRPC code names, so mapping to gRPC is 1:1)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    INTERNAL = "INTERNAL"


class ModelweaveError(Exception):
    """Root of every modelweave error.

    Args:
        message: Human-readable description; names the offending field or node.
        node: Graph path of the node where the error arose, if any.
    """

    status: Status = Status.INTERNAL

    def __init__(self, message: str, *, node: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.node = node
        #: Partial trace (a ``modelweave.v1.Trace``) when the executor raised it.
        self.trace: Any = None

    def __reduce__(self) -> tuple[object, ...]:
        # Errors cross process boundaries (Ray replicas); keep keyword state.
        return (_rebuild, (type(self), self.message, self.node))

    def __str__(self) -> str:
        return f"{self.message} (node {self.node})" if self.node else self.message


def _rebuild(cls: type[ModelweaveError], message: str, node: str) -> ModelweaveError:
    return cls(message, node=node)


class InvalidArgument(ModelweaveError):
    """Bad input from the caller (request body, graph file, CLI argument)."""

    status = Status.INVALID_ARGUMENT


class GraphSpecError(InvalidArgument):
    """The graph file is malformed or does not type-check."""


class NotFound(ModelweaveError):
    """A named graph, node or resource does not exist."""

    status = Status.NOT_FOUND


class DeadlineExceeded(ModelweaveError):
    """The request's deadline passed before the graph finished."""

    status = Status.DEADLINE_EXCEEDED


class Unavailable(ModelweaveError):
    """A model or deployment is overloaded or unreachable; retrying later may work."""

    status = Status.UNAVAILABLE


class ResourceExhausted(ModelweaveError):
    """A size or queue bound was exceeded."""

    status = Status.RESOURCE_EXHAUSTED


class FailedPrecondition(ModelweaveError):
    """The graph ran but could not produce an acceptable answer (e.g. validation exhausted)."""

    status = Status.FAILED_PRECONDITION


class ModelError(ModelweaveError):
    """A model raised an unexpected exception."""

    status = Status.INTERNAL


_BY_STATUS: dict[Status, type[ModelweaveError]] = {
    Status.INVALID_ARGUMENT: InvalidArgument,
    Status.NOT_FOUND: NotFound,
    Status.DEADLINE_EXCEEDED: DeadlineExceeded,
    Status.UNAVAILABLE: Unavailable,
    Status.RESOURCE_EXHAUSTED: ResourceExhausted,
    Status.FAILED_PRECONDITION: FailedPrecondition,
    Status.INTERNAL: ModelError,
}


def error_for_status(status: Status | str, message: str, *, node: str = "") -> ModelweaveError:
    """Builds the error class that corresponds to ``status``."""
    return _BY_STATUS[Status(status)](message, node=node)
