"""The demo model: a small Hugging Face model that runs offline.

`build_demo_model(out_dir)` installs the committed *trained* demo model (a Llama trained on a
synthetic language of facts, with its transcoders and feature labels; see pipeline.py and
install.py). `arch="gemma2"` or `random_weights=True` builds random weights instead (random_model.py).
"""

from __future__ import annotations

from pathlib import Path

from circuit_serve.demo import random_model
from circuit_serve.demo.install import install_trained_model, trained_assets_available


def build_demo_model(
    out_dir: str | Path, *, arch: random_model.Arch = "llama", seed: int = 0, random_weights: bool = False
) -> Path:
    """Write the demo model to `out_dir`; return it (the trained one unless random is asked for)."""
    if arch == "llama" and not random_weights and trained_assets_available():
        return install_trained_model(out_dir)
    return random_model.build_demo_model(out_dir, arch=arch, seed=seed)


__all__ = ["build_demo_model"]
