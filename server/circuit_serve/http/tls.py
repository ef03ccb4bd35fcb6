"""TLS of the HTTP front door from the same PEM files as gRPC (`--tls-cert`, `--tls-key`,
`--tls-client-ca` for mTLS); None for plaintext."""

from __future__ import annotations

import ssl

from circuit_serve.config.security import SecurityConfig


def ssl_context(config: SecurityConfig) -> ssl.SSLContext | None:
    if not config.tls:
        return None
    assert config.tls_cert is not None and config.tls_key is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    if config.tls_client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=config.tls_client_ca)
    return context
