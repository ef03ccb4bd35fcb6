"""Install the committed trained demo model (see pipeline.py) into a directory.

    OUT_DIR/                 the HF model + tokenizer (what `serve --model` and vLLM load)
    OUT_DIR/transcoders/     its per-layer transcoders (`serve --transcoders`)
    OUT_DIR/labels.json      feature labels (`serve --labels`)
    OUT_DIR/manifest.json    hashes, settings and measured numbers

Files are checked against the manifest's hashes after copying.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"  # the committed results of pipeline.run_pipeline(ASSETS)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def trained_assets_available() -> bool:
    return (ASSETS / "manifest.json").is_file()


def install_trained_model(out_dir: str | Path) -> Path:
    """Copy the trained model's files into `out_dir` (created if missing); return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((ASSETS / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        rel = Path(name)
        dest = out / (rel.relative_to("model") if rel.parts[0] == "model" else rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ASSETS / rel, dest)
        if sha256(dest) != digest:
            raise RuntimeError(f"{ASSETS / rel} does not match its manifest hash; reinstall the package")
    shutil.copyfile(ASSETS / "manifest.json", out / "manifest.json")
    return out
