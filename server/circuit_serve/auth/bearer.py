"""`Authorization: Bearer <token>` -> the caller, for every front door (gRPC metadata, HTTP headers).

`bearer_principal(tokens, value)` returns `(principal, "")` or `(None, reason)` with the reason one of
`missing_token`, `malformed_header`, `unknown_token` (the label of `circuit_auth_failures`); each
front door words its own refusal (it knows how its callers send a header).
"""

from __future__ import annotations

from circuit_serve.auth.principal import Principal
from circuit_serve.auth.tokens import TokenTable

MALFORMED = "the authorization header must read `Bearer <token>`"
UNKNOWN = "the token is not valid on this server (unknown or revoked)"


def bearer_principal(tokens: TokenTable, value: str | None) -> tuple[Principal | None, str]:
    """The principal of an authorization header value (None: absent)."""
    if value is None:
        return None, "missing_token"
    scheme, _, token = str(value).strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None, "malformed_header"
    principal = tokens.lookup(token)
    if principal is None:
        return None, "unknown_token"
    return principal, ""


def scope_refusal(route: str, need: str, principal: Principal) -> str:
    """The message for a known token that lacks `need`."""
    held = ", ".join(sorted(principal.scopes)) or "none"
    return f"{route} needs the scope '{need}' (or 'admin'); this token (tenant '{principal.name}') has: {held}"
