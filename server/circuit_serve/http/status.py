"""The one map from domain errors to HTTP statuses and OpenAI's error JSON (the HTTP front door's
counterpart of `rpc/status.py`; both are keyed by the classes of `domain/errors.py`).

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": "invalid_request"}}

`param` names the OpenAI request field at fault (the domain error's field, translated by the
route's `params` map); `code` is the domain error's kind.
"""

from __future__ import annotations

from dataclasses import dataclass

from circuit_serve.domain import errors


@dataclass(frozen=True)
class HttpError(Exception):
    """A refusal with its HTTP status and OpenAI error body (raised by the front door's own checks)."""

    status: int
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    retry_after_s: int | None = None  # sent as `Retry-After` (the OpenAI SDKs wait that long before a retry)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# status, OpenAI error type, code, Retry-After seconds
_MAP: dict[type[errors.CircuitError], tuple[int, str, str, int | None]] = {
    errors.InvalidRequest: (400, "invalid_request_error", "invalid_request", None),
    errors.NotConfigured: (400, "invalid_request_error", "not_configured", None),
    errors.NotSupported: (400, "invalid_request_error", "not_supported", None),
    errors.PermissionDenied: (403, "permission_error", "missing_scope", None),
    errors.NotFound: (404, "not_found_error", "not_found", None),
    errors.CapacityExceeded: (429, "rate_limit_error", "capacity_exceeded", 1),
    errors.BackendUnavailable: (503, "service_unavailable_error", "unavailable", 1),
    errors.DeadlineExceeded: (504, "timeout_error", "deadline_exceeded", None),
    errors.Cancelled: (499, "cancelled_error", "cancelled", None),
}


def http_error(exc: errors.CircuitError, params: dict[str, str] | None = None) -> HttpError:
    """The HTTP refusal for a domain error (its most specific registered class); `params` maps the
    domain's field names (`sampling.max_new_tokens`) to the route's OpenAI names (`max_tokens`)."""
    field = getattr(exc, "field", None)
    message = str(exc)
    param = None
    if field:
        param = (params or {}).get(field, field)
        message = f"{param}: {message.removeprefix(f'{field}: ')}"
    for cls in type(exc).__mro__:
        if cls in _MAP:
            status, kind, code, retry = _MAP[cls]  # type: ignore[index]
            return HttpError(status, message, kind, param, code, retry)
    return HttpError(500, message, "server_error", param, "internal")


def unauthenticated(message: str) -> HttpError:
    return HttpError(401, message, "authentication_error", None, "invalid_api_key")


def forbidden(message: str) -> HttpError:
    return HttpError(403, message, "permission_error", None, "missing_scope")


def bad_field(param: str, message: str) -> HttpError:
    return HttpError(400, f"{param}: {message}", "invalid_request_error", param, "invalid_request")
