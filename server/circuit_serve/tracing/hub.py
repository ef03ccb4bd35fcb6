"""Where model and transcoder files come from: a local directory or a Hugging Face repository.

A spec is one of:

1. a local directory (an existing path);
2. `org/name[/subfolder][@revision]` (circuit-tracer's `HfUri.from_str` spelling);
3. `hf://org/name/path[?revision=REV]` (the spelling of `config.yaml` `transcoders:` entries).

Repository files are resolved through `huggingface_hub` (`hf_hub_download`, `snapshot_download`),
so its cache (`HF_HOME` / `HF_HUB_CACHE`), its offline mode (`HF_HUB_OFFLINE=1`) and its token
apply. Nothing here reads the environment itself. Every failure is an `InvalidRequest` naming the
repository, file and revision and saying what to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from circuit_serve.domain.errors import InvalidRequest


@dataclass(frozen=True)
class HubRef:
    """A file or folder in a Hugging Face repository."""

    repo_id: str  # org/name
    path: str | None  # file or subfolder inside the repository; None: the root
    revision: str | None  # branch, tag or commit; None: main

    def __str__(self) -> str:
        where = self.repo_id + (f"/{self.path}" if self.path else "")
        return where + (f"@{self.revision}" if self.revision else "")


def parse_hf_uri(uri: str) -> HubRef:
    """`hf://org/name/path?revision=REV` -> HubRef (path required)."""
    parsed = urlparse(uri)
    parts = parsed.path.lstrip("/").split("/", 1)
    if parsed.scheme != "hf" or not parsed.netloc or len(parts) != 2 or not parts[1]:
        raise InvalidRequest(f"{uri!r} is not an hf://org/name/path[?revision=REV] reference", field="transcoders")
    revision = parse_qs(parsed.query).get("revision", [None])[0] or None
    return HubRef(f"{parsed.netloc}/{parts[0]}", parts[1], revision)


def parse_repo_spec(spec: str) -> HubRef | None:
    """`org/name[/subfolder][@revision]` or `hf://...` -> HubRef; None if it cannot be one."""
    if spec.startswith("hf://"):
        return parse_hf_uri(spec)
    body, _, revision = spec.partition("@")
    parts = body.strip("/").split("/")
    if len(parts) < 2 or any(not p or p in (".", "..") for p in parts) or spec.startswith(("/", ".", "~")):
        return None
    return HubRef("/".join(parts[:2]), "/".join(parts[2:]) or None, revision or None)


def _hub_error(ref: HubRef, filename: str, exc: Exception) -> InvalidRequest:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = f"{filename} of {ref.repo_id}" + (f" at revision {ref.revision}" if ref.revision else "")
    if isinstance(exc, GatedRepoError):
        hint = "the repository is gated: accept its terms on huggingface.co and log in (HF_TOKEN)"
    elif isinstance(exc, RepositoryNotFoundError):
        hint = "no such repository (or it is private: log in with HF_TOKEN); check the repo id"
    elif isinstance(exc, RevisionNotFoundError):
        hint = "no such revision; check the part after '@'"
    elif isinstance(exc, LocalEntryNotFoundError):
        hint = (
            "it is not in the Hugging Face cache and the hub cannot be reached (offline mode or no "
            "network); download it first or unset HF_HUB_OFFLINE"
        )
    elif isinstance(exc, EntryNotFoundError):
        hint = "the repository has no such file; check the path"
    else:
        hint = str(exc)
    return InvalidRequest(f"cannot get {what}: {hint}", field="transcoders")


def hub_file(ref: HubRef, filename: str | None = None) -> Path:
    """Local path of one file of a repository (downloaded into, or read from, the hub cache)."""
    from huggingface_hub import hf_hub_download

    name = "/".join(p for p in (ref.path, filename) if p) if filename else ref.path
    if not name:
        raise InvalidRequest(f"{ref} names a repository, not a file", field="transcoders")
    try:
        return Path(hf_hub_download(repo_id=ref.repo_id, filename=name, revision=ref.revision))
    except Exception as exc:  # huggingface_hub's errors, mapped to what to change
        raise _hub_error(ref, name, exc) from exc


def hub_folder(ref: HubRef, allow_patterns: list[str] | None = None) -> Path:
    """Local snapshot folder of a repository (only `allow_patterns` files), at `ref.path` inside it."""
    from huggingface_hub import snapshot_download

    patterns = None
    if allow_patterns is not None:
        patterns = [f"{ref.path}/{p}" if ref.path else p for p in allow_patterns]
    try:
        root = Path(snapshot_download(repo_id=ref.repo_id, revision=ref.revision, allow_patterns=patterns))
    except Exception as exc:
        raise _hub_error(ref, ", ".join(patterns or ["*"]), exc) from exc
    return root / ref.path if ref.path else root


def snapshot_commit(path: Path) -> str | None:
    """The commit hash of a file or folder inside a hub cache snapshot (`.../snapshots/<hash>/...`)."""
    parts = Path(path).parts
    for i in range(len(parts) - 1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            return parts[i + 1]
    return None


def resolve_model_dir(spec: str | Path) -> Path:
    """A model directory: `spec` itself when it is a directory, else the repository's snapshot."""
    p = Path(spec)
    if p.is_dir():
        return p
    ref = parse_repo_spec(str(spec))
    if ref is None:
        raise InvalidRequest(f"{spec} is neither a model directory nor a Hugging Face repo id", field="model")
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
    try:
        return hub_folder(ref, patterns)
    except InvalidRequest as exc:
        raise InvalidRequest(str(exc).removeprefix("transcoders: "), field="model") from None
