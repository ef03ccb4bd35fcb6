"""Domain errors raised by engines and infrastructure.

Engines never know about gRPC. They raise these; `circuit_serve.rpc.status` is the
one place that maps them to status codes. Each message says what to change.
"""

from __future__ import annotations


class CircuitError(Exception):
    """Base class for every error that is the caller's or the deployment's to fix."""


class InvalidRequest(CircuitError):
    """The request is malformed or outside a limit (gRPC INVALID_ARGUMENT)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class NotFound(CircuitError):
    """A named thing (graph key, request id, feature) does not exist (NOT_FOUND)."""


class CapacityExceeded(CircuitError):
    """The server is full right now; try again later (RESOURCE_EXHAUSTED)."""


class PermissionDenied(CircuitError):
    """The caller lacks the scope a part of its request needs (PERMISSION_DENIED)."""


class NotConfigured(CircuitError):
    """The server was started without what this call needs (FAILED_PRECONDITION)."""


class NotSupported(CircuitError):
    """The server does not do this for this input, by design (FAILED_PRECONDITION); the message
    says why and what to do instead (e.g. auditing a steered completion)."""


class BackendUnavailable(CircuitError):
    """The model is not loaded yet or is shutting down (UNAVAILABLE)."""


class DeadlineExceeded(CircuitError):
    """The work did not finish before the caller's deadline (DEADLINE_EXCEEDED)."""


class Cancelled(CircuitError):
    """Every caller waiting for this work went away (CANCELLED)."""


class JobFailed(CircuitError):
    """A graph job of the fleet ended FAILED (a worker error, or dead-lettered after too many
    deliveries); the message gives the reason (ABORTED)."""
