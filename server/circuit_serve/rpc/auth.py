"""Token authentication and scope checks for every RPC, from one table.

Each call's metadata must carry `authorization: Bearer <token>`; the token's entry in
the tokens file (`circuit_serve.auth.tokens`) names its tenant and scopes. Refusals:
- no header, a header that is not `Bearer ...`, or an unknown token -> UNAUTHENTICATED;
- a known token without the method's scope -> PERMISSION_DENIED naming the scope;
- a method missing from `METHOD_SCOPES` -> PERMISSION_DENIED (fail closed: a new RPC
  must be given a scope here before anyone can call it).
Health checks are always open; reflection follows `--reflection`. An admitted call runs
with its `Principal` as `current_caller()`. Failures are counted by reason, never by
token or tenant, and no token is ever logged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from circuit_serve.auth.principal import Principal, Scope, calling_as
from circuit_serve.auth.tokens import TokenTable
from circuit_serve.config.security import Reflection
from circuit_serve.metrics.auth import AuthMetrics

log = logging.getLogger(__name__)

# Any valid token, whatever its scopes (calls that reveal nothing but the served model).
AUTHENTICATED = "authenticated"

# The one map from RPC method to the scope it needs.
METHOD_SCOPES: dict[str, Scope | str] = {
    "circuit.v1.Generation/Generate": Scope.GENERATE,
    "circuit.v1.Generation/GenerateStream": Scope.GENERATE,
    "circuit.v1.Generation/Tokenize": AUTHENTICATED,
    "circuit.v1.Generation/ModelInfo": AUTHENTICATED,
    "circuit.v1.Attribution/Attribute": Scope.ATTRIBUTE,
    "circuit.v1.Attribution/GetGraph": Scope.ATTRIBUTE,
    "circuit.v1.Attribution/GetGraphStream": Scope.ATTRIBUTE,
    "circuit.v1.Features/FeatureActivations": Scope.FEATURES,
    "circuit.v1.Features/Steer": Scope.STEER,
}

HEALTH_PREFIX = "grpc.health.v1.Health/"
REFLECTION_PREFIX = "grpc.reflection."

_NO_TOKEN = ("this server requires a token: send the metadata `authorization: Bearer <token>` "
             "(circuit CLI: set CIRCUIT_TOKEN or pass --token-file)")
_MALFORMED = "the authorization metadata must read `Bearer <token>`"
_UNKNOWN = "the token is not valid on this server (unknown or revoked)"


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: TokenTable, metrics: AuthMetrics, *, reflection: Reflection = Reflection.TOKEN) -> None:
        self._tokens = tokens
        self._metrics = metrics
        self._reflection = reflection

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        name = handler_call_details.method.lstrip("/")
        if name.startswith(HEALTH_PREFIX):
            return handler
        if name.startswith(REFLECTION_PREFIX):
            need: Scope | str | None = None if self._reflection == Reflection.OPEN else AUTHENTICATED
        else:
            need = METHOD_SCOPES.get(name)
            if need is None:
                log.error("RPC %s has no entry in METHOD_SCOPES; refusing it", name)
                return self._refuse(handler, "unmapped_method", grpc.StatusCode.PERMISSION_DENIED,
                                    f"{name} is not open to any scope on this server")
        if need is None:
            return handler
        principal, failure = self._authenticate(handler_call_details.invocation_metadata)
        if principal is None:
            reason, message = failure
            return self._refuse(handler, reason, grpc.StatusCode.UNAUTHENTICATED, message)
        if need != AUTHENTICATED and not principal.allows(need):  # type: ignore[arg-type]
            held = ", ".join(sorted(principal.scopes)) or "none"
            return self._refuse(handler, "missing_scope", grpc.StatusCode.PERMISSION_DENIED,
                                f"{name} needs the scope '{need}' (or 'admin'); this token "
                                f"(tenant '{principal.name}') has: {held}")
        return _as_caller(handler, principal)

    def _authenticate(self, metadata: Any) -> tuple[Principal | None, tuple[str, str]]:
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            return None, ("missing_token", _NO_TOKEN)
        scheme, _, token = str(values[0]).strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None, ("malformed_header", _MALFORMED)
        principal = self._tokens.lookup(token)
        if principal is None:
            return None, ("unknown_token", _UNKNOWN)
        return principal, ("", "")

    def _refuse(self, handler: grpc.RpcMethodHandler, reason: str, code: grpc.StatusCode,
                message: str) -> grpc.RpcMethodHandler:
        self._metrics.failures.labels(reason).inc()
        return refusal(handler, code, message)


def _as_caller(handler: grpc.RpcMethodHandler, principal: Principal) -> grpc.RpcMethodHandler:
    """The same handler, running with `principal` as the current caller. Each RPC runs in its
    own task (its own context), so the value set here is seen by that call alone."""

    def unary(behavior):
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            calling_as(principal)
            return await behavior(request, context)

        return run

    def stream(behavior):
        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            calling_as(principal)
            async with contextlib.aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    yield response

        return run

    if handler.unary_unary:
        return handler._replace(unary_unary=unary(handler.unary_unary))
    if handler.unary_stream:
        return handler._replace(unary_stream=stream(handler.unary_stream))
    if handler.stream_unary:
        return handler._replace(stream_unary=unary(handler.stream_unary))
    return handler._replace(stream_stream=stream(handler.stream_stream))


def refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """The same method, answering `code` without running the servicer (any of the four kinds)."""

    async def refuse_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # makes this an async generator

    if handler.unary_unary:
        return handler._replace(unary_unary=refuse_unary)
    if handler.unary_stream:
        return handler._replace(unary_stream=refuse_stream)
    if handler.stream_unary:
        return handler._replace(stream_unary=refuse_unary)
    return handler._replace(stream_stream=refuse_stream)
