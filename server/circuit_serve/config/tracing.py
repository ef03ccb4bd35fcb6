"""Configuration of `circuit-serve attribute`: the replacement model and one attribution request.

The only reader of the command's flags (and of `CIRCUIT_MODEL` / `CIRCUIT_TRANSCODERS` as
defaults for `--model` / `--transcoders`).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from circuit_serve.tracing.settings import AttributionSettings

_GIB = 1 << 30


def identity_cache_dir() -> Path:
    """This project's cache of weight-file hashes: $CIRCUIT_CACHE_DIR, else $XDG_CACHE_HOME or
    ~/.cache, then circuit-serve (weight directories may be read-only)."""
    env = os.environ.get
    if env("CIRCUIT_CACHE_DIR"):
        return Path(env("CIRCUIT_CACHE_DIR"))
    return Path(env("XDG_CACHE_HOME") or Path.home() / ".cache") / "circuit-serve"


@dataclass(frozen=True)
class TracingConfig:
    """What the replacement model loads and the limits it enforces."""

    model: Path  # a directory or a Hugging Face repo id
    transcoders: Path  # a directory or a Hugging Face repo id
    dtype: str = "float32"  # float32 | bfloat16
    device: str = "cpu"  # cpu | cuda | cuda:N
    memory_budget_bytes: int | None = None  # refuse requests estimated above this
    max_prompt_tokens: int | None = None  # None: the model's max_position_embeddings


@dataclass(frozen=True)
class AttributeCommandConfig:
    tracing: TracingConfig
    settings: AttributionSettings
    out: Path | None  # pruned frontend JSON (this and/or `html`)
    prompt: str | None = None
    token_ids: list[int] | None = None
    npz: Path | None = None
    labels: Path | None = None
    slug: str = "graph"
    progress: bool = True  # a progress bar when stderr is a terminal
    targets: list[int] = field(default_factory=list)
    html: Path | None = None  # the interactive graph view (one self-contained HTML file)
    messages: list[tuple[str, str]] | None = None  # (role, content), rendered with the chat template
    identity_cache: Path | None = None  # where weight-file hashes are kept between runs

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        env = os.environ.get
        d = AttributionSettings()
        parser.add_argument("--model", type=Path, default=env("CIRCUIT_MODEL"), required=env("CIRCUIT_MODEL") is None,
                            help="Hugging Face model directory or repo id org/name[@revision] (env CIRCUIT_MODEL)")
        parser.add_argument("--transcoders", type=Path, default=env("CIRCUIT_TRANSCODERS"),
                            required=env("CIRCUIT_TRANSCODERS") is None,
                            help="transcoder directory or Hugging Face repo id org/name[/subfolder][@revision], "
                                 "in circuit-tracer's formats (env CIRCUIT_TRANSCODERS)")
        src = parser.add_mutually_exclusive_group(required=True)
        src.add_argument("--prompt", help="text; tokenized as generation does (BOS prepended if missing)")
        src.add_argument("--token-ids", help="comma- or space-separated token ids (BOS prepended if missing)")
        src.add_argument("--message", action="append", metavar="ROLE:CONTENT",
                         help="a chat message, rendered with the model's chat template (repeatable)")
        parser.add_argument("--max-n-logits", type=int, default=d.max_n_logits)
        parser.add_argument("--desired-logit-prob", type=float, default=d.desired_logit_prob)
        parser.add_argument("--max-feature-nodes", type=int, default=None, help="default: every active feature")
        parser.add_argument("--batch-size", type=int, default=d.batch_size, help="targets per backward pass")
        parser.add_argument("--node-threshold", type=float, default=d.node_threshold)
        parser.add_argument("--edge-threshold", type=float, default=d.edge_threshold)
        parser.add_argument("--target", type=int, action="append", default=[], dest="targets",
                            help="explicit target token id (repeatable); default: the most probable tokens")
        parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
        parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
        parser.add_argument("--memory-budget-gib", type=float, default=None,
                            help="refuse graphs whose estimated peak memory exceeds this")
        parser.add_argument("--out", type=Path, default=None, help="pruned frontend graph JSON")
        parser.add_argument("--html", type=Path, default=None,
                            help="the interactive graph view: one self-contained HTML file (with or without --out)")
        parser.add_argument("--npz", type=Path, default=None, help="also write the full unpruned graph (.npz)")
        parser.add_argument("--labels", type=Path, default=None,
                            help='JSON list of {"layer", "index", "label"}: feature labels (clerp)')
        parser.add_argument("--slug", default=None, help="graph name in the JSON metadata (default: --out's stem)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AttributeCommandConfig:
        ids = None
        if args.token_ids is not None:
            try:
                ids = [int(t) for t in args.token_ids.replace(",", " ").split()]
            except ValueError as e:
                raise SystemExit(f"--token-ids: {e}") from None
        if args.out is None and args.html is None:
            raise SystemExit("circuit-serve attribute: give --out FILE (graph JSON) and/or --html FILE (graph view)")
        budget = None if args.memory_budget_gib is None else int(args.memory_budget_gib * _GIB)
        messages = None
        if args.message:
            messages = []
            for m in args.message:
                role, sep, content = m.partition(":")
                if not sep or not role.strip():
                    raise SystemExit(f"--message: expected ROLE:CONTENT (e.g. 'user:Hello'), got {m!r}")
                messages.append((role.strip(), content.lstrip()))
        return cls(
            tracing=TracingConfig(model=args.model, transcoders=args.transcoders, dtype=args.dtype,
                                  device=args.device, memory_budget_bytes=budget),
            settings=AttributionSettings(
                max_n_logits=args.max_n_logits,
                desired_logit_prob=args.desired_logit_prob,
                max_feature_nodes=args.max_feature_nodes,
                batch_size=args.batch_size,
                node_threshold=args.node_threshold,
                edge_threshold=args.edge_threshold,
            ),
            out=args.out,
            prompt=args.prompt,
            token_ids=ids,
            npz=args.npz,
            labels=args.labels,
            slug=args.slug or (args.out or args.html).stem,
            progress=not args.no_progress,
            targets=list(args.targets),
            html=args.html,
            messages=messages,
            identity_cache=identity_cache_dir(),
        )
