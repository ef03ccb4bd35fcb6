"""Binding the gRPC port: TLS (and mTLS) when configured, plaintext otherwise (with a warning
when the address can be reached from other machines)."""

from __future__ import annotations

import logging

import grpc

from circuit_serve.config.security import SecurityConfig, is_loopback

log = logging.getLogger(__name__)


def server_credentials(config: SecurityConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from the PEM files (client certificates required when a client CA is
    given); None for plaintext."""
    if not config.tls:
        return None
    assert config.tls_cert is not None and config.tls_key is not None
    client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def bind(server: grpc.aio.Server, address: str, config: SecurityConfig) -> int:
    """Add the listening port; returns it (0 when binding failed)."""
    credentials = server_credentials(config)
    if credentials is not None:
        log.info("gRPC transport: TLS%s", " with client certificates required (mTLS)" if config.tls_client_ca else "")
        return server.add_secure_port(address, credentials)
    host = address.rpartition(":")[0]
    if not is_loopback(host):
        log.warning(
            "gRPC transport: PLAINTEXT on %s, reachable from other machines: traffic and tokens travel "
            "unencrypted; give --tls-cert/--tls-key (and --tls-client-ca) or bind --host 127.0.0.1",
            address,
        )
    return server.add_insecure_port(address)
