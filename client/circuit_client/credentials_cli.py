"""Flags (and their environment variables) that give `circuit` and `circuit-serve demo` their
TLS files and token; the only reader of `CIRCUIT_TOKEN`, `CIRCUIT_CA_CERT`, ...

A token is never taken on the command line (it would show in `ps`): give it in the
environment (`CIRCUIT_TOKEN`) or in a file (`--token-file`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from circuit_client.credentials import Credentials


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    g = parser.add_argument_group("security (TLS and token)")
    g.add_argument(
        "--ca-cert",
        default=env("CIRCUIT_CA_CERT"),
        help="PEM CA bundle the server certificate must chain to; turns TLS on (env CIRCUIT_CA_CERT)",
    )
    g.add_argument(
        "--client-cert",
        default=env("CIRCUIT_CLIENT_CERT"),
        help="PEM client certificate for a server that requires one (env CIRCUIT_CLIENT_CERT)",
    )
    g.add_argument(
        "--client-key", default=env("CIRCUIT_CLIENT_KEY"), help="its PEM private key (env CIRCUIT_CLIENT_KEY)"
    )
    g.add_argument(
        "--tls",
        action="store_true",
        default=bool(env("CIRCUIT_TLS")),
        help="TLS checked against the system's root certificates (env CIRCUIT_TLS=1)",
    )
    g.add_argument(
        "--server-name",
        default=env("CIRCUIT_SERVER_NAME"),
        help="name to verify in the server certificate instead of the target's host",
    )
    g.add_argument(
        "--token-file",
        type=Path,
        default=env("CIRCUIT_TOKEN_FILE"),
        help="file holding the bearer token (env CIRCUIT_TOKEN_FILE; or the token itself in CIRCUIT_TOKEN)",
    )


def credentials_from_args(args: argparse.Namespace) -> Credentials:
    token = os.environ.get("CIRCUIT_TOKEN") or None
    if args.token_file is not None:
        token = Path(args.token_file).read_text().strip() or None
    if bool(args.client_cert) != bool(args.client_key):
        raise SystemExit("error: give --client-cert and --client-key together")
    return Credentials(
        token=token,
        ca_cert=args.ca_cert or None,
        client_cert=args.client_cert or None,
        client_key=args.client_key or None,
        tls=args.tls,
        server_name=args.server_name or None,
    )
