"""Configuration of transport security and authentication of `circuit-serve serve`.

Each field is declared once (config/option.py): its flag, its environment variable (`CIRCUIT_TLS_CERT`,
...) and its default.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import ClassVar

from circuit_serve.config.option import OptionError, Options, option


class Reflection(StrEnum):
    OPEN = "open"  # anyone may list the services
    TOKEN = "token"  # any valid token (no scope needed); open when there is no tokens file
    OFF = "off"  # not registered at all


@dataclass(frozen=True)
class SecurityConfig(Options):
    group: ClassVar[str] = "security"

    tls_cert: Path | None = option(
        None,
        flag="--tls-cert",
        type=Path,
        env="CIRCUIT_TLS_CERT",
        help="PEM server certificate chain; with --tls-key the server speaks TLS only",
    )
    tls_key: Path | None = option(
        None, flag="--tls-key", type=Path, env="CIRCUIT_TLS_KEY", help="PEM private key of --tls-cert"
    )
    tls_client_ca: Path | None = option(  # clients must present a certificate it signed (mTLS)
        None,
        flag="--tls-client-ca",
        type=Path,
        env="CIRCUIT_TLS_CLIENT_CA",
        help="PEM CA bundle: require client certificates signed by it (mTLS)",
    )
    auth_tokens: Path | None = option(  # see circuit_serve.auth.tokens; None: no authentication
        None,
        flag="--auth-tokens",
        type=Path,
        env="CIRCUIT_AUTH_TOKENS",
        help="tokens file (YAML or JSON list of {name, sha256, scopes}); every RPC but health "
        "then needs `authorization: Bearer TOKEN`; SIGHUP reloads it",
    )
    reflection: Reflection = option(
        Reflection.TOKEN,
        flag="--reflection",
        type=str,
        choices=tuple(r.value for r in Reflection),
        convert=Reflection,
        help="server reflection: open, token (any valid token) or off",
    )

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def check(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = ("--tls-cert", "--tls-key") if self.tls_key is None else ("--tls-key", "--tls-cert")
            raise OptionError(given, f"needs {missing}: give --tls-cert and --tls-key together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise OptionError("--tls-client-ca", "(mTLS) needs --tls-cert and --tls-key")
        for flag, path in (
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
            ("--tls-client-ca", self.tls_client_ca),
            ("--auth-tokens", self.auth_tokens),
        ):
            if path is not None and not path.is_file():
                raise OptionError(flag, f"{path} is not a file")


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
