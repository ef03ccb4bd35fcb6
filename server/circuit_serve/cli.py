"""`circuit-serve` console script: dispatches to one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import sys

from circuit_serve.config.option import OptionParser

# subcommand name -> module under circuit_serve.commands
_COMMANDS = {
    "serve": "serve",
    "demo": "demo",
    "demo-model": "demo_model",
    "attribute": "attribute",
    "train-demo": "train_demo",
    "memory-plan": "memory_plan",
}


def build_parser() -> argparse.ArgumentParser:
    parser = OptionParser(prog="circuit-serve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _COMMANDS.values():
        mod = importlib.import_module(f"circuit_serve.commands.{module}")
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
