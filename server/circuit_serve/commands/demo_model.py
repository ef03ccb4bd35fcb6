"""`circuit-serve demo-model OUT_DIR`: install the offline demo model (Hugging Face format).

By default the trained Llama demo model with its transcoders and labels; `--random-weights`
(or `--arch gemma2`) builds a deterministic random-weight model instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo-model", help="build the offline demo model", description=__doc__)
    parser.add_argument("out_dir", type=Path, help="directory to write (created if missing)")
    parser.add_argument("--arch", choices=["llama", "gemma2"], default="llama")
    parser.add_argument("--seed", type=int, default=0, help="seed of a random-weight model")
    parser.add_argument(
        "--random-weights", action="store_true", help="build random weights instead of installing the trained model"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from circuit_serve.demo import build_demo_model

    path = build_demo_model(args.out_dir, arch=args.arch, seed=args.seed, random_weights=args.random_weights)
    print(path)
    return 0
