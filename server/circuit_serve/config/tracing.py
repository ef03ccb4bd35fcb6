"""Configuration of `circuit-serve attribute`: the replacement model and one attribution request.

Each field is declared once (config/option.py). `--model` and `--transcoders` are declared here
(`MODEL`, `TRANSCODERS`) for `attribute` and `serve` alike, with `CIRCUIT_MODEL` / `CIRCUIT_TRANSCODERS`
as their defaults; the attribution settings' defaults are `AttributionSettings`'s own.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from circuit_serve.config.option import Option, OptionError, Options, declared, option
from circuit_serve.tracing.settings import AttributionSettings

_GIB = 1 << 30

MODEL = Option(
    flag="--model",
    type=Path,
    env="CIRCUIT_MODEL",
    required=True,
    help="Hugging Face model directory or repo id org/name[@revision]",
)
TRANSCODERS = Option(
    flag="--transcoders",
    type=Path,
    env="CIRCUIT_TRANSCODERS",
    help="transcoder directory or Hugging Face repo id org/name[/subfolder][@revision], in circuit-tracer's formats",
)
_INPUT = "input (one of)"


def identity_cache_dir() -> Path:
    """This project's cache of weight-file hashes: $CIRCUIT_CACHE_DIR, else $XDG_CACHE_HOME or
    ~/.cache, then circuit-serve (weight directories may be read-only)."""
    env = os.environ.get
    if env("CIRCUIT_CACHE_DIR"):
        return Path(env("CIRCUIT_CACHE_DIR"))
    return Path(env("XDG_CACHE_HOME") or Path.home() / ".cache") / "circuit-serve"


def parse_token_ids(text: str) -> list[int]:
    """`--token-ids "2,160 80"` -> `[2, 160, 80]`."""
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma- or space-separated token ids, got {text!r}") from None


def parse_chat_message(text: str) -> tuple[str, str]:
    """`--message "user:Hello"` -> `("user", "Hello")`."""
    role, sep, content = text.partition(":")
    if not sep or not role.strip():
        raise argparse.ArgumentTypeError(f"expected ROLE:CONTENT (e.g. 'user:Hello'), got {text!r}")
    return role.strip(), content.lstrip()


@dataclass(frozen=True)
class TracingConfig(Options):
    """What the replacement model loads and the limits it enforces."""

    model: Path = declared(MODEL)  # a directory or a Hugging Face repo id
    transcoders: Path = declared(replace(TRANSCODERS, required=True))  # a directory or a Hugging Face repo id
    dtype: str = option("float32", flag="--dtype", choices=("float32", "bfloat16"))
    device: str = option("cpu", flag="--device", help="cpu, cuda or cuda:N")
    memory_budget_bytes: int | None = option(  # refuse requests estimated above this
        None,
        flag="--memory-budget-gib",
        type=float,
        unit=_GIB,
        unit_name="GiB",
        gt=0,
        help="refuse graphs whose estimated peak memory exceeds this",
    )
    max_prompt_tokens: int | None = None  # None: the model's max_position_embeddings


@dataclass(frozen=True)
class SettingsFlags(Options):
    """The flags of one request's `AttributionSettings` (its defaults; its `validate` checks the values)."""

    _d: ClassVar[type[AttributionSettings]] = AttributionSettings

    max_n_logits: int = option(_d.max_n_logits, flag="--max-n-logits", help="at most this many logit targets")
    desired_logit_prob: float = option(
        _d.desired_logit_prob,
        flag="--desired-logit-prob",
        help="logit targets are taken until their cumulative probability reaches this",
    )
    max_feature_nodes: int | None = option(
        _d.max_feature_nodes, flag="--max-feature-nodes", type=int, help="default: every active feature"
    )
    batch_size: int = option(_d.batch_size, flag="--batch-size", help="targets per backward pass")
    node_threshold: float = option(
        _d.node_threshold, flag="--node-threshold", help="pruning: cumulative node influence kept"
    )
    edge_threshold: float = option(
        _d.edge_threshold, flag="--edge-threshold", help="pruning: cumulative edge influence kept"
    )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AttributionSettings:  # type: ignore[override]
        return AttributionSettings(**cls.values_from_args(args))


@dataclass(frozen=True)
class AttributeCommandConfig(Options):
    sections: ClassVar[dict[str, type]] = {"tracing": TracingConfig, "settings": SettingsFlags}

    tracing: TracingConfig
    settings: AttributionSettings
    out: Path | None = option(None, flag="--out", type=Path, help="pruned frontend graph JSON (this and/or --html)")
    prompt: str | None = option(
        None,
        flag="--prompt",
        type=str,
        group=_INPUT,
        help="text; tokenized as generation does (BOS prepended if missing)",
    )
    token_ids: list[int] | None = option(
        None,
        flag="--token-ids",
        type=parse_token_ids,
        group=_INPUT,
        help="comma- or space-separated token ids (BOS prepended if missing)",
    )
    npz: Path | None = option(None, flag="--npz", type=Path, help="also write the full unpruned graph (.npz)")
    labels: Path | None = option(
        None, flag="--labels", type=Path, help='JSON list of {"layer", "index", "label"}: feature labels (clerp)'
    )
    slug: str | None = option(
        None, flag="--slug", type=str, help="graph name in the JSON metadata (default: --out's stem)"
    )
    progress: bool = option(True, flag="--no-progress", negate=True, help="no progress bar")  # only on a terminal
    targets: list[int] = option(
        default_factory=list,
        flag="--target",
        type=int,
        action="append",
        convert=list,
        help="explicit target token id (repeatable); default: the most probable tokens",
    )
    html: Path | None = option(  # the interactive graph view (one self-contained HTML file)
        None,
        flag="--html",
        type=Path,
        help="the interactive graph view: one self-contained HTML file (with or without --out)",
    )
    messages: list[tuple[str, str]] | None = option(  # (role, content), rendered with the chat template
        None,
        flag="--message",
        type=parse_chat_message,
        action="append",
        metavar="ROLE:CONTENT",
        group=_INPUT,
        help="a chat message, rendered with the model's chat template (repeatable)",
    )
    identity_cache: Path | None = field(default_factory=identity_cache_dir)  # weight-file hashes between runs

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The input flags (`--prompt`, `--token-ids`, `--message`) are mutually exclusive; one is required."""
        super().add_arguments(_OneInput(parser, parser.add_mutually_exclusive_group(required=True)))

    @classmethod
    def values_from_args(cls, args: argparse.Namespace) -> dict:
        values = super().values_from_args(args)
        named = values["out"] or values["html"]
        return values | {
            "messages": values["messages"] or None,
            "slug": values["slug"] or (named.stem if named else None),
        }

    def check(self) -> None:
        if self.out is None and self.html is None:
            raise OptionError("--out", "give --out FILE (graph JSON) and/or --html FILE (graph view)")


class _OneInput:
    """The parser as `Options.add_arguments` sees it, with the input group mutually exclusive."""

    def __init__(self, parser: argparse.ArgumentParser, exclusive) -> None:
        self.parser, self.exclusive = parser, exclusive

    def add_argument_group(self, title: str):
        return self.exclusive if title == _INPUT else self.parser.add_argument_group(title)

    def add_argument(self, *a, **kw):
        return self.parser.add_argument(*a, **kw)
