"""The tokens file: who may call, as what tenant, with which scopes; reloaded on SIGHUP.

    # tokens.yaml (or the same list in JSON)
    - name: acme                 # the tenant
      sha256: 9f86d081884c7d65...  # hex SHA-256 of the token; the token itself is never stored
      scopes: [generate, attribute]
    - name: ops
      sha256: ...
      scopes: [admin]

`TokenTable.lookup(token)` hashes the presented token and finds its entry. `reload()`
reads the file again and swaps the table in one assignment: calls already admitted
finish as they were; the next call sees the new file. A file that does not parse
leaves the old table in place (and says why, never quoting a token).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

from circuit_serve.auth.principal import Principal, Scope

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"[0-9a-f]{64}")


class TokenFileError(ValueError):
    """The tokens file is missing, does not parse, or has an invalid entry."""


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_tokens(text: str, *, source: str = "tokens file") -> dict[str, Principal]:
    """sha256 hex -> Principal, from YAML or JSON text (a list of {name, sha256, scopes})."""
    try:
        doc = json.loads(text)
    except ValueError:
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TokenFileError(f"{source}: neither JSON nor YAML ({type(exc).__name__})") from None
    if isinstance(doc, dict) and "tokens" in doc:
        doc = doc["tokens"]
    if not isinstance(doc, list):
        raise TokenFileError(f"{source}: expected a list of {{name, sha256, scopes}} entries")
    table: dict[str, Principal] = {}
    for i, entry in enumerate(doc):
        where = f"{source}: entry {i}"
        if not isinstance(entry, dict) or set(entry) - {"name", "sha256", "scopes"}:
            raise TokenFileError(f"{where}: expected exactly the keys name, sha256, scopes")
        name, digest, scopes = entry.get("name"), entry.get("sha256"), entry.get("scopes")
        if not isinstance(name, str) or not name.strip():
            raise TokenFileError(f"{where}: name must be a non-empty string (the tenant)")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest.lower()):
            raise TokenFileError(
                f"{where} ({name}): sha256 must be 64 hex digits (the SHA-256 of the token, "
                'e.g. `printf %s "$TOKEN" | sha256sum`)'
            )
        if not isinstance(scopes, list) or not scopes:
            raise TokenFileError(f"{where} ({name}): scopes must be a non-empty list of {', '.join(Scope)}")
        unknown = [s for s in scopes if s not in set(Scope)]
        if unknown:
            raise TokenFileError(f"{where} ({name}): unknown scopes {unknown}; known: {', '.join(Scope)}")
        if digest.lower() in table:
            raise TokenFileError(f"{where} ({name}): the same token hash appears twice")
        table[digest.lower()] = Principal(name.strip(), frozenset(Scope(s) for s in scopes))
    return table


class TokenTable:
    """The loaded tokens file. `on_reload(ok)` is told of each reload's outcome (metrics)."""

    def __init__(self, path: Path, *, on_reload: Callable[[bool, int], None] = lambda ok, n: None) -> None:
        self.path = path
        self._on_reload = on_reload
        self._table = self._read()  # a bad file at start-up is fatal: raise
        on_reload(True, len(self._table))

    def __len__(self) -> int:
        return len(self._table)

    def lookup(self, token: str) -> Principal | None:
        return self._table.get(token_sha256(token))

    def reload(self) -> bool:
        """Read the file again; keep the old table when it is invalid. Returns success."""
        try:
            table = self._read()
        except TokenFileError as exc:
            log.error("tokens file not reloaded, the previous one stays in force: %s", exc)
            self._on_reload(False, len(self._table))
            return False
        self._table = table  # one assignment: a call sees either the old table or the new one
        log.info("tokens file %s reloaded: %d tokens", self.path, len(table))
        self._on_reload(True, len(table))
        return True

    def _read(self) -> dict[str, Principal]:
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise TokenFileError(f"cannot read the tokens file {self.path}: {exc.strerror}") from None
        return parse_tokens(text, source=str(self.path))
