"""Fixtures for the security tests: test certificates (openssl) and a tokens file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # makes tests/support importable

from circuit_serve.auth.tokens import token_sha256  # noqa: E402
from circuit_serve.testing.certs import Pki, make_pki  # noqa: E402

# tenant name -> (token, scopes). Tokens are long random-looking strings so that a grep
# of logs and metrics for them cannot match anything else.
TOKENS: dict[str, tuple[str, list[str]]] = {
    "acme": ("tok-acme-5b1f0c7e9d2a4e3f8a6b", ["generate", "attribute"]),
    "globex": ("tok-globex-c3d9a1e07f6b42d8915e", ["generate", "attribute"]),
    "gen-only": ("tok-gen-only-8e2f4a6c1b3d5f7a9c0e", ["generate"]),
    "auditor": ("tok-auditor-1a3c5e7g9i2k4m6o8q0s", ["attribute"]),
    "feat": ("tok-feat-7d9f1b3e5a7c9e1f3b5d", ["features"]),
    "steerer": ("tok-steerer-2c4e6a8b0d2f4a6c8e0b", ["steer"]),
    "ops": ("tok-ops-admin-9f8e7d6c5b4a39281706", ["admin"]),
    "revoked": ("tok-revoked-4b6d8f0a2c4e6b8d0f2a", ["generate"]),
}


def token(name: str) -> str:
    return TOKENS[name][0]


def write_tokens(path: Path, names: list[str], extra: dict[str, tuple[str, list[str]]] | None = None) -> Path:
    entries = {**{n: TOKENS[n] for n in names}, **(extra or {})}
    doc = [{"name": n, "sha256": token_sha256(t), "scopes": s} for n, (t, s) in entries.items()]
    path.write_text(json.dumps(doc, indent=1))
    return path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# Redis and metrics fixtures of the attribution-service tests (a real Redis, started here
# unless REDIS_URL is given; keys under a unique prefix, deleted after).
from attribution_service.conftest import metrics, redis_prefix, redis_service, registry  # noqa: E402,F401
