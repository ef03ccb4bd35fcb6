"""Authentication metrics: refusals by reason (never by token or tenant), tokens loaded, reloads."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

FAILURE_REASONS = ("missing_token", "malformed_header", "unknown_token", "missing_scope", "unmapped_method")


class AuthMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.failures = Counter(
            "circuit_auth_failures",
            "RPCs refused by authentication or authorization, by reason.",
            ["reason"],
            registry=registry,
        )
        for reason in FAILURE_REASONS:
            self.failures.labels(reason)
        self.tokens = Gauge("circuit_auth_tokens", "Tokens in the loaded tokens file.", registry=registry)
        self.reloads = Counter(
            "circuit_auth_reloads",
            "Reloads of the tokens file (SIGHUP), by result.",
            ["result"],
            registry=registry,
        )
        for result in ("ok", "error"):
            self.reloads.labels(result)

    def reloaded(self, ok: bool, tokens: int) -> None:
        self.reloads.labels("ok" if ok else "error").inc()
        self.tokens.set(tokens)
