"""A Hugging Face hub cache laid out by hand, offline and deterministically.

    add_repo(hub_dir, "org/name", {"config.yaml": b"...", "layer_0.safetensors": Path(...)})

writes what `huggingface_hub` leaves behind after a download, so that `hf_hub_download` and
`snapshot_download` resolve from it with `HF_HUB_OFFLINE=1`:

    hub_dir/models--org--name/blobs/<sha256 of the bytes>          the file contents
    hub_dir/models--org--name/snapshots/<commit>/<path>            relative symlinks to the blobs
    hub_dir/models--org--name/refs/main                            the commit hash

`hub_dir` is `$HF_HOME/hub`. The commit is a sha1 over the repository's paths and contents.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def add_repo(hub_dir: Path, repo_id: str, files: dict[str, bytes | Path], *, ref: str = "main") -> str:
    """Write `files` (repo path -> bytes or a file to copy) as one commit of `repo_id`; returns the commit."""
    repo = Path(hub_dir) / ("models--" + repo_id.replace("/", "--"))
    contents = {k: (v.read_bytes() if isinstance(v, Path) else v) for k, v in sorted(files.items())}
    commit = hashlib.sha1(
        b"".join(k.encode() + b"\0" + hashlib.sha256(v).digest() for k, v in contents.items())
    ).hexdigest()
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for path, data in contents.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        link = repo / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return commit
