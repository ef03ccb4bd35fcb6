"""Authentication and authorization: tokens, tenants and scopes (no gRPC here)."""

from circuit_serve.auth.principal import ANONYMOUS, Principal, Scope, current_caller
from circuit_serve.auth.tokens import TokenFileError, TokenTable, parse_tokens, token_sha256

__all__ = [
    "ANONYMOUS",
    "Principal",
    "Scope",
    "TokenFileError",
    "TokenTable",
    "current_caller",
    "parse_tokens",
    "token_sha256",
]
