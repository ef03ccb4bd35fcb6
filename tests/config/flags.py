"""The parsers of every `circuit-serve` subcommand, and the flags they define."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from circuit_serve.cli import build_parser


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def all_flags() -> set[str]:
    return {flag for p in subcommand_parsers().values() for flag in p._option_string_actions}


def limits_fields() -> dict[str, str | None]:
    """`circuit.v1.Limits` field -> the flag its comment names in brackets (generation.proto), or None."""
    proto = (Path(__file__).resolve().parents[2] / "protos" / "circuit" / "v1" / "generation.proto").read_text()
    body = proto[proto.index("message Limits {") :]
    body = body[: body.index("\n}")]
    out: dict[str, str | None] = {}
    for m in re.finditer(r"^\s*\w+ (\w+) = \d+;(.*)$", body, flags=re.MULTILINE):
        flag = re.search(r"\[(--[a-z0-9-]+)\]", m.group(2))
        out[m.group(1)] = flag.group(1) if flag else None
    return out
