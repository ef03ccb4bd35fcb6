"""Configuration of transport security and authentication of `circuit-serve serve`.

The only reader of `--tls-cert`, `--tls-key`, `--tls-client-ca`, `--auth-tokens`,
`--reflection` and of their environment variables (`CIRCUIT_TLS_CERT`, ...).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Reflection(StrEnum):
    OPEN = "open"  # anyone may list the services
    TOKEN = "token"  # any valid token (no scope needed); open when there is no tokens file
    OFF = "off"  # not registered at all


@dataclass(frozen=True)
class SecurityConfig:
    tls_cert: Path | None = None  # PEM certificate chain of the server; with tls_key: TLS
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # PEM CA bundle; clients must present a certificate it signed (mTLS)
    auth_tokens: Path | None = None  # tokens file (see circuit_serve.auth.tokens); None: no authentication
    reflection: Reflection = Reflection.TOKEN

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        env = os.environ.get
        g = parser.add_argument_group("security")
        g.add_argument("--tls-cert", type=Path, default=env("CIRCUIT_TLS_CERT"),
                       help="PEM server certificate chain; with --tls-key the server speaks TLS only "
                            "(env CIRCUIT_TLS_CERT)")
        g.add_argument("--tls-key", type=Path, default=env("CIRCUIT_TLS_KEY"),
                       help="PEM private key of --tls-cert (env CIRCUIT_TLS_KEY)")
        g.add_argument("--tls-client-ca", type=Path, default=env("CIRCUIT_TLS_CLIENT_CA"),
                       help="PEM CA bundle: require client certificates signed by it (mTLS; env CIRCUIT_TLS_CLIENT_CA)")
        g.add_argument("--auth-tokens", type=Path, default=env("CIRCUIT_AUTH_TOKENS"),
                       help="tokens file (YAML or JSON list of {name, sha256, scopes}); every RPC but health "
                            "then needs `authorization: Bearer TOKEN`; SIGHUP reloads it (env CIRCUIT_AUTH_TOKENS)")
        g.add_argument("--reflection", choices=[r.value for r in Reflection], default=Reflection.TOKEN.value,
                       help="server reflection: open, token (any valid token) or off (default %(default)s)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SecurityConfig:
        config = cls(
            tls_cert=args.tls_cert or None,
            tls_key=args.tls_key or None,
            tls_client_ca=args.tls_client_ca or None,
            auth_tokens=args.auth_tokens or None,
            reflection=Reflection(args.reflection),
        )
        config.validate()
        return config

    def validate(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give --tls-cert and --tls-key together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
        for flag, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key),
                           ("--tls-client-ca", self.tls_client_ca), ("--auth-tokens", self.auth_tokens)):
            if path is not None and not path.is_file():
                raise ValueError(f"{flag} {path} is not a file")


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
