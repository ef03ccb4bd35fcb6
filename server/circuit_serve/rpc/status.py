"""The one map from domain errors to gRPC status codes."""

from __future__ import annotations

import grpc

from circuit_serve.domain import errors

_CODES: dict[type[errors.CircuitError], grpc.StatusCode] = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.CapacityExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.NotConfigured: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NotSupported: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.BackendUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.JobFailed: grpc.StatusCode.ABORTED,
}


def status_for(exc: errors.CircuitError) -> tuple[grpc.StatusCode, str]:
    """The status code and message for a domain error (its most specific registered base class)."""
    for cls in type(exc).__mro__:
        code = _CODES.get(cls)  # type: ignore[arg-type]
        if code is not None:
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, str(exc)
