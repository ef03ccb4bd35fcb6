"""Content identities of weight files, computed once and reused across restarts.

`file_identity(paths)` is the sha256 over each file's name and bytes (in name order). Hashing tens
of GB takes minutes, so with a cache directory the result is stored under a key made of each
file's resolved path, size and modification time (nanoseconds): a restart with unchanged files
reads the stored digest instead of the weights. Any change of size or mtime (a rewritten or
replaced file) gives a new key and a fresh hash. The digest is the same with or without the
cache, so graph keys do not change. The cache lives in this project's directory (weights may be
read-only); a cache that cannot be written is skipped, never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def _hash_files(paths: list[Path]) -> str:
    """sha256 over the names and bytes of the given files (streamed, 16 MiB at a time)."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def _stat_key(paths: list[Path]) -> str:
    rows = []
    for p in sorted(paths, key=lambda q: q.name):
        st = os.stat(p)  # follows the hub cache's symlinks to the blobs
        rows.append([p.name, str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def file_identity(paths: list[Path], cache_dir: Path | None = None) -> str:
    """sha256 over the files' names and bytes; read from `cache_dir` when the files are unchanged."""
    if cache_dir is None:
        return _hash_files(paths)
    entry = Path(cache_dir) / "identities" / _stat_key(paths)
    try:
        digest = entry.read_text().strip()
        if len(digest) == 64:
            return digest
    except OSError:
        pass
    digest = _hash_files(paths)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(digest)
        tmp.replace(entry)
    except OSError as exc:
        log.warning("cannot write the identity cache %s (%s); the next start hashes again", entry, exc)
    return digest
