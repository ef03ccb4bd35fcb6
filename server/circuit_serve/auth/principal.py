"""Who is calling: a tenant name and its scopes. No gRPC here.

The auth interceptor (`circuit_serve.rpc.auth`) sets the caller of each RPC with
`calling_as`; the servicers and the finish listener read it with `current_caller()`
and hand it to the services explicitly. A server without a tokens file serves
everyone as `ANONYMOUS`, which holds every scope (the behaviour before tokens existed).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from enum import StrEnum


class Scope(StrEnum):
    GENERATE = "generate"  # Generate, GenerateStream
    ATTRIBUTE = "attribute"  # Attribute, GetGraph (own completions and graphs only)
    FEATURES = "features"  # FeatureActivations
    STEER = "steer"  # Steer
    ADMIN = "admin"  # every scope above, and audits of any tenant's completions


@dataclass(frozen=True, slots=True)
class Principal:
    name: str  # the tenant: owner of the completions it generates
    scopes: frozenset[Scope]

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or self.is_admin

    def may_read(self, owner: str) -> bool:
        """May this caller read what tenant `owner` produced (a completion, a graph of it)?"""
        return self.is_admin or owner == self.name


ANONYMOUS = Principal("", frozenset(Scope))

_CALLER: contextvars.ContextVar[Principal] = contextvars.ContextVar("circuit_caller", default=ANONYMOUS)


def current_caller() -> Principal:
    """The caller of the RPC this code runs for (`ANONYMOUS` when the server has no tokens)."""
    return _CALLER.get()


def calling_as(principal: Principal) -> contextvars.Token:
    return _CALLER.set(principal)


def reset_caller(token: contextvars.Token) -> None:
    _CALLER.reset(token)
