"""Subcommands of the `circuit-serve` console script, one module each.

Each module exposes `add_parser(subparsers)` (which registers its flags) and
`run(args) -> int`.
"""
