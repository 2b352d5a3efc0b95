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
    UNAUTHENTICATED = "UNAUTHENTICATED"


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


class ReplicaLost(Unavailable):
    """The replica (or pool worker) running a model call died or could not be reached.

    The call did not complete; another replica may answer it. The executor retries
    these for idempotent models within the request's deadline and a retry budget.
    """


class Overloaded(Unavailable):
    """Shed by admission control: the graph cannot serve this request in time now.

    UNAVAILABLE (HTTP 503, gRPC UNAVAILABLE) rather than RESOURCE_EXHAUSTED: it is the code
    gRPC retry policies and client libraries treat as retryable, it maps 1:1 to HTTP 503,
    and RESOURCE_EXHAUSTED already means "this request is too large" here (HTTP 413), which
    no retry fixes.

    Args:
        message: Why the request was shed.
        retry_after_s: How long the client should wait before retrying (HTTP ``Retry-After``,
            gRPC trailing metadata ``retry-after``).
        node: Graph path, when a model's own queue was full.
    """

    def __init__(self, message: str, *, retry_after_s: float = 1.0, node: str = "") -> None:
        super().__init__(message, node=node)
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_overloaded, (self.message, self.retry_after_s, self.node))


def _rebuild_overloaded(message: str, retry_after_s: float, node: str) -> Overloaded:
    return Overloaded(message, retry_after_s=retry_after_s, node=node)


class ResourceExhausted(ModelweaveError):
    """A size or queue bound was exceeded."""

    status = Status.RESOURCE_EXHAUSTED


class FailedPrecondition(ModelweaveError):
    """The graph ran but could not produce an acceptable answer (e.g. validation exhausted)."""

    status = Status.FAILED_PRECONDITION


class Unauthenticated(ModelweaveError):
    """The caller presented no credentials, or credentials no configured token matches."""

    status = Status.UNAUTHENTICATED


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
    Status.UNAUTHENTICATED: Unauthenticated,
}


def error_for_status(status: Status | str, message: str, *, node: str = "") -> ModelweaveError:
    """Builds the error class that corresponds to ``status``."""
    return _BY_STATUS[Status(status)](message, node=node)
