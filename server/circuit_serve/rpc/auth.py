"""Token authentication and scope checks for every RPC, from one table.

Each call's metadata must carry `authorization: Bearer <token>`; the token's entry in
the tokens file (`circuit_serve.auth.tokens`) names its tenant and scopes. Refusals:
- no header, a header that is not `Bearer ...`, or an unknown token -> UNAUTHENTICATED;
- a known token without the method's scope -> PERMISSION_DENIED naming the scope;
- a method missing from `SCOPES` -> PERMISSION_DENIED (fail closed: a new RPC
  must be given a scope here before anyone can call it).
Health checks are always open; reflection follows `--reflection`. An admitted call runs
with its `Principal` as `current_caller()`. Failures are counted by reason, never by
token or tenant, and no token is ever logged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from circuit_proto.v1 import attribution_pb2, features_pb2, generation_pb2
from circuit_serve.auth.bearer import MALFORMED, UNKNOWN, bearer_principal, scope_refusal
from circuit_serve.auth.principal import Principal, Scope, calling_as
from circuit_serve.auth.tokens import TokenTable
from circuit_serve.config.security import Reflection
from circuit_serve.metrics.auth import AuthMetrics
from circuit_serve.rpc.wrapping import HEALTH_PREFIX, REFLECTION_PREFIX, HandlerInterceptor, Layer, refusal, wrapped

log = logging.getLogger(__name__)

# Any valid token, whatever its scopes (calls that reveal nothing but the served model).
AUTHENTICATED = "authenticated"

_GENERATION: ServiceDescriptor = generation_pb2.DESCRIPTOR.services_by_name["Generation"]
_ATTRIBUTION: ServiceDescriptor = attribution_pb2.DESCRIPTOR.services_by_name["Attribution"]
_FEATURES: ServiceDescriptor = features_pb2.DESCRIPTOR.services_by_name["Features"]

# The one map from RPC method (its generated descriptor) to the scope it needs.
SCOPES: dict[MethodDescriptor, Scope | str] = {
    _GENERATION.methods_by_name["Generate"]: Scope.GENERATE,
    _GENERATION.methods_by_name["GenerateStream"]: Scope.GENERATE,
    _GENERATION.methods_by_name["Tokenize"]: AUTHENTICATED,
    _GENERATION.methods_by_name["ModelInfo"]: AUTHENTICATED,
    _ATTRIBUTION.methods_by_name["Attribute"]: Scope.ATTRIBUTE,
    _ATTRIBUTION.methods_by_name["GetGraph"]: Scope.ATTRIBUTE,
    _ATTRIBUTION.methods_by_name["GetGraphStream"]: Scope.ATTRIBUTE,
    _ATTRIBUTION.methods_by_name["GetJob"]: Scope.ATTRIBUTE,
    _ATTRIBUTION.methods_by_name["WatchJob"]: Scope.ATTRIBUTE,
    _ATTRIBUTION.methods_by_name["CancelJob"]: Scope.ATTRIBUTE,
    _FEATURES.methods_by_name["FeatureActivations"]: Scope.FEATURES,
    _FEATURES.methods_by_name["Steer"]: Scope.STEER,
}


def method_path(method: MethodDescriptor) -> str:
    """The name a call arrives with, without its leading slash: "circuit.v1.Generation/Generate"."""
    return f"{method.containing_service.full_name}/{method.name}"


# `SCOPES` by the name a call arrives with.
METHOD_SCOPES: dict[str, Scope | str] = {method_path(m): need for m, need in SCOPES.items()}

_NO_TOKEN = (
    "this server requires a token: send the metadata `authorization: Bearer <token>` "
    "(circuit CLI: set CIRCUIT_TOKEN or pass --token-file)"
)
_MESSAGES = {"missing_token": _NO_TOKEN, "malformed_header": MALFORMED, "unknown_token": UNKNOWN}


class AuthInterceptor(HandlerInterceptor):
    def __init__(self, tokens: TokenTable, metrics: AuthMetrics, *, reflection: Reflection = Reflection.TOKEN) -> None:
        self._tokens = tokens
        self._metrics = metrics
        self._reflection = reflection

    def wrap(
        self, name: str, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        if name.startswith(HEALTH_PREFIX):
            return handler
        if name.startswith(REFLECTION_PREFIX):
            need: Scope | str | None = None if self._reflection == Reflection.OPEN else AUTHENTICATED
        else:
            need = METHOD_SCOPES.get(name)
            if need is None:
                log.error("RPC %s has no entry in SCOPES; refusing it", name)
                return self._refuse(
                    handler,
                    "unmapped_method",
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{name} is not open to any scope on this server",
                )
        if need is None:
            return handler
        principal, failure = self._authenticate(details.invocation_metadata)
        if principal is None:
            reason, message = failure
            return self._refuse(handler, reason, grpc.StatusCode.UNAUTHENTICATED, message)
        if need != AUTHENTICATED and not principal.allows(need):  # type: ignore[arg-type]
            return self._refuse(
                handler, "missing_scope", grpc.StatusCode.PERMISSION_DENIED, scope_refusal(name, need, principal)
            )
        return wrapped(handler, _as_caller(principal))

    def _authenticate(self, metadata: Any) -> tuple[Principal | None, tuple[str, str]]:
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        principal, reason = bearer_principal(self._tokens, values[0] if values else None)
        return principal, (reason, _MESSAGES.get(reason, ""))

    def _refuse(
        self, handler: grpc.RpcMethodHandler, reason: str, code: grpc.StatusCode, message: str
    ) -> grpc.RpcMethodHandler:
        self._metrics.failures.labels(reason).inc()
        return refusal(handler, code, message)


def _as_caller(principal: Principal) -> Layer:
    """A layer running the call with `principal` as the current caller. Each RPC runs in its
    own task (its own context), so the value set here is seen by that call alone."""

    @contextlib.asynccontextmanager
    async def layer(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        calling_as(principal)
        yield

    return layer
